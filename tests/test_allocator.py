"""The ``uni-lab`` command keeps freed memory for reuse (glibc), and nothing else changes."""
import subprocess
import sys
import textwrap

import pytest

from uni_lab import allocator

GLIBC = sys.platform.startswith("linux") and bool(__import__("os").confstr("CS_GNU_LIBC_VERSION").startswith("glibc"))

# Page faults in a round of allocations like a pass's (blocks of 3-30 MiB, filled, then all freed),
# after three such rounds: blocks the allocator kept are reused without a fault, blocks handed
# back to the kernel are faulted in anew (9,088 pages of 4 KiB).
PROBE = textwrap.dedent("""
    import resource, torch
    from uni_lab import allocator
    print(allocator.keep_freed_memory(), allocator.state())
    def round_():
        blocks = []
        for mib in (30, 20, 12, 30, 6, 25, 3, 16):
            t = torch.empty(mib * 2**18); t.fill_(1.0); blocks.append(t)
    for _ in range(3):
        round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    round_()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")
PAGES = (30 + 20 + 12 + 30 + 6 + 25 + 3 + 16) * 2**20 // 4096


def _probe(env_value: str | None) -> tuple[str, int]:
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop(allocator.ENV, None)
    if env_value is not None:
        env[allocator.ENV] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    flag, faults = out.stdout.split("\n")[:2]
    return flag, int(faults)


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_freed_memory_is_reused_without_new_page_faults():
    flag, faults = _probe(None)
    assert flag == "True kept"
    assert faults < PAGES // 4, f"{faults} page faults in a round of {PAGES} reused pages"


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_switched_off_by_the_environment_and_then_faulted_in_anew():
    flag, faults = _probe("0")
    assert flag == "False default"
    assert faults > PAGES // 2, "glibc's default now keeps these blocks: the setting may no longer be needed"


def test_a_library_import_leaves_malloc_alone():
    out = subprocess.run([sys.executable, "-c", "import uni_lab, uni_lab.allocator as a; print(a.state())"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "default"

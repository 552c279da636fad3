"""Freed memory kept for reuse: how the ``uni-lab`` command sets glibc's ``malloc`` for its process.

By default glibc hands large freed blocks back to the kernel: a block above the mmap threshold
(which adapts, but never past 32 MiB) is unmapped when freed, and free memory at the top of the
heap is trimmed. A forward/backward pass of a batch at 224² allocates and frees hundreds of MB
of activations, so the next pass asks the kernel for fresh pages, and the kernel zeroes every
one of them: on a 2-core CPU a third of the bench's CPU seconds were system time, and the
README's main job ran 25-35 % faster with freed memory kept (BENCHMARKS.md, "Allocator").

The command owns its process, so :func:`keep_freed_memory` fixes three thresholds once, before
any work: no trimming below 2 GiB of free heap, a 1 GiB pad whenever the heap grows, and the
mmap threshold at its 32 MiB maximum (fixed, so that it no longer adapts). Only the process's
resident memory changes: it stays near its peak instead of shrinking between passes. Values are
never affected. Importing :mod:`uni_lab` as a library changes nothing, and
``UNI_LAB_KEEP_FREED_MEMORY=0`` turns it off for the command too. Other C libraries (musl, macOS,
Windows) are left as they are.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "UNI_LAB_KEEP_FREED_MEMORY"
# mallopt's parameter numbers (glibc's malloc.h) and the values set; mallopt takes a C int.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {_M_TRIM_THRESHOLD: 2**31 - 1, _M_TOP_PAD: 2**30, _M_MMAP_THRESHOLD: 32 * 2**20}
_STATE = ["default"]


def state() -> str:
    """``"kept"`` once :func:`keep_freed_memory` has set glibc's thresholds in this process, else ``"default"``."""
    return _STATE[0]


def keep_freed_memory() -> bool:
    """Set glibc's thresholds so that freed memory stays with the process (see the module doc).

    Returns whether they were set; ``False`` off glibc, when ``UNI_LAB_KEEP_FREED_MEMORY`` is
    ``0``/``false``/``no``/``off``, or when the C library refuses a value.
    """
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl's mallopt accepts these numbers and ignores them
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    if ok:
        _STATE[0] = "kept"
    return ok

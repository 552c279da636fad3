"""What broke when the toolkit was tried as a new user and as an adversary would (issue 16), beyond
the bad-input matrix of ``test_bad_inputs.py``: locks, signals, a full disk, the caller's model,
diagnoses that must name the right culprit, and the command line's own speed.
"""
from __future__ import annotations

import errno
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from store_runs import PLUGIN, make_images, run_cli

import uni_lab
from uni_lab import cli
from uni_lab.check import check_store
from uni_lab.commands.run import import_plugins
from uni_lab.errors import InputError, StoreError
from uni_lab.store import Store, open_store

BASE = ["--plugins", str(PLUGIN), "--model", "tiny16", "--methods", "ig:black", "--steps", "2", "--device", "cpu",
        "--no-progress", "--batch-size", "2"]


def _run(capsys, images, out, *extra) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["run", *BASE, "--images", *map(str, images), "--out", str(out), *extra])
    return code, capsys.readouterr().err


def _one_line(err: str, command: str = "run") -> None:
    assert err.startswith(f"uni-lab {command}: error: ") and err.count("\n") == 1, err


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_images(tmp_path / "imgs", n=4)


@pytest.fixture
def store(folder, tmp_path, capsys) -> Path:
    out = tmp_path / "s.zarr"
    code, err = _run(capsys, [folder], out)
    assert code == 0, err
    return out


# --- one writer at a time ---------------------------------------------------------------------------

def test_second_unsharded_run_and_evaluate_are_refused_while_a_run_writes(store, folder, capsys):
    running = Store(store)
    running.hold("exclusive")  # what a `uni-lab run` without --shard holds while it computes
    try:
        code, err = _run(capsys, [folder], store)
        assert code == 2
        _one_line(err)
        assert re.search(r"is being written by another uni-lab process.*--shard I/N", err), err
        capsys.readouterr()
        assert cli.main(["evaluate", str(store), "--plugins", str(PLUGIN), "--metrics", "deletion", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "is being written by another uni-lab process" in err and "AttributeError" not in err, err
        assert cli.main(["check", "--repair", str(store)]) == 2
    finally:
        running.release()
    code, err = _run(capsys, [folder], store)  # once it is gone the same command resumes: nothing left to do
    assert code == 0, err


def test_shards_share_the_lock(store, folder, capsys):
    other = Store(store)
    other.hold("shared")  # another --shard job of the same run
    try:
        code, err = _run(capsys, [folder], store, "--shard", "1/2")
        assert code == 0, err
    finally:
        other.release()


def test_run_holds_the_lock_from_the_moment_its_store_appears(folder, tmp_path):
    """A real second process: the store is locked before it is visible, so nothing can slip in."""
    out = tmp_path / "s.zarr"
    first = run_cli(folder, out, 1, fault="slow:1", wait=False)  # minutes of work: still running below
    try:
        for _ in range(1200):
            if Store(out).exists() or first.poll() is not None:
                break
            time.sleep(0.05)
        assert Store(out).exists(), first.communicate()
        second = run_cli(folder, out, 1)
        still_running = first.poll() is None
    finally:
        first.kill()
        _, first_err = first.communicate()
    assert still_running, first_err
    assert second.returncode == 2, (second.stderr, first_err)
    assert "is being written by another uni-lab process" in second.stderr


# --- signals and a full disk ------------------------------------------------------------------------

def test_sigterm_says_what_sigint_says(folder, tmp_path):
    out = tmp_path / "s.zarr"
    proc = run_cli(folder, out, 1, fault="slow:0.3", wait=False)
    for _ in range(600):
        if Store(out).exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM); finished items are kept, rerun the same command to resume." in err
    assert "Traceback" not in err
    assert check_store(out).consistent


def test_disk_full_is_one_line_and_keeps_finished_items(store, folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "full.zarr"
    real = Store.write_items
    calls = []

    def fills_up(self, *args, **kwargs):  # the second batch finds the disk full
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Store, "write_items", fills_up)
    code, err = _run(capsys, [folder], out)
    assert code == 2
    _one_line(err)
    assert re.search(r"disk full writing .*full\.zarr; free space .* rerun the same command \(finished items are kept\)",
                     err), err
    report = check_store(out)
    assert report.consistent and report.done == 2  # the first batch (2 images) is on disk and done


# --- the caller's model -----------------------------------------------------------------------------

def _small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Dropout(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5))


def test_explain_leaves_a_train_mode_model_in_train_mode_and_names_the_normalisation():
    net = _small_net().train()
    with pytest.warns(UserWarning, match=r"ImageNet's mean \(0\.485, 0\.456, 0\.406\) and std .* mean=\(0, 0, 0\)"):
        exp = uni_lab.explain("ig:black", net, torch.rand(2, 3, 16, 16))
    assert exp.attribution.shape == (2, 3, 16, 16)
    assert all(m.training for m in net.modules())
    net.eval()
    uni_lab.explain("ig:black", uni_lab.wrap(net, mean=(0, 0, 0), std=(1, 1, 1)), torch.rand(2, 3, 16, 16))
    assert not any(m.training for m in net.modules())


def test_run_and_evaluate_give_the_callers_classifiers_back_as_they_were(tmp_path):
    """A run sets every model's input size to the first one's and, with channels_last, changes the
    network's layout; an evaluation moves given models to its device. Each comes back as it was
    (the device itself cannot be told apart on a machine with only a CPU)."""
    from uni_lab import evaluate

    first = uni_lab.wrap(_small_net(), mean=(0, 0, 0), std=(1, 1, 1), input_size=(16, 16), name="a")
    second = uni_lab.wrap(_small_net(), mean=(0, 0, 0), std=(1, 1, 1), input_size=(24, 24), name="b")
    before = [{k: v.clone() for k, v in c.state_dict().items()} for c in (first, second)]
    for k, layout in enumerate((False, True)):
        out = tmp_path / f"s{k}.zarr"
        uni_lab.run([first, second], images=["chelsea"], methods=["ig:black"], steps=2, out=out, progress=False,
                    channels_last=layout, seed_stability=False)
        evaluate(out, metrics="mufidelity", sets={"mufidelity.n_subsets": 4}, models=[first, second], progress=False)
        assert (first.input_size, second.input_size) == ((16, 16), (24, 24))
        for clf, old in zip((first, second), before):
            assert all(p.is_contiguous() for p in clf.parameters()), "the network's layout was left channels_last"
            assert all(torch.equal(v, old[k]) for k, v in clf.state_dict().items())


# --- diagnoses that name the right culprit -----------------------------------------------------------

@uni_lab.baseline("nan_baseline_for_test")
def _nan_baseline(x, model, target):
    return torch.full_like(x, float("nan"))


@uni_lab.baseline("flat_baseline_for_test")
def _flat_baseline(x, model, target):
    return x.flatten(1)


@pytest.mark.parametrize("name,message", [("nan_baseline_for_test", r"baseline 'nan_baseline_for_test' returned NaN"),
                                          ("flat_baseline_for_test", r"baseline 'flat_baseline_for_test' returned \(2, 768\)")])
def test_a_broken_baseline_plugin_is_named(name, message):
    net = _small_net().eval()
    with pytest.raises(InputError, match=message):
        uni_lab.explain(f"ig:{name}", uni_lab.wrap(net, mean=(0, 0, 0), std=(1, 1, 1)), torch.rand(2, 3, 16, 16))


def test_a_bare_network_given_to_run_is_named_with_the_fix(tmp_path):
    out = tmp_path / "s.zarr"
    with pytest.raises(InputError, match=r"a bare Sequential .* uni_lab\.wrap\(net"):
        uni_lab.run(_small_net(), images=["chelsea"], methods=["ig:black"], steps=2, out=out, progress=False)
    assert not out.exists()


def test_a_run_that_fails_before_finishing_anything_leaves_no_store(tmp_path):
    """The fixed command must not be refused as "another configuration" by the empty store of the
    failed one; a run that finished items keeps its store (test_disk_full_... above)."""
    clf = uni_lab.wrap(_small_net().eval(), mean=(0, 0, 0), std=(1, 1, 1), input_size=(16, 16), name="a")
    out = tmp_path / "s.zarr"
    with pytest.raises(InputError, match="nan_baseline_for_test"):
        uni_lab.run(clf, images=["chelsea"], methods=["ig:nan_baseline_for_test"], steps=2, out=out, progress=False)
    assert not out.exists()
    uni_lab.run(clf, images=["chelsea"], methods=["ig:black"], steps=2, out=out, progress=False)
    assert bool(open_store(out)["done"].all())


def test_missing_input_chunk_is_named_not_blamed_on_the_model(store):
    import_plugins([str(PLUGIN)])
    chunk = next(p for p in (store / "input").iterdir() if not p.name.startswith("."))
    chunk.unlink()
    from uni_lab import evaluate

    # a chunk holds a block of images (two of the four here): all of them are named
    with pytest.raises(StoreError, match=r"stored input of images \['im\d'(, 'im\d')*\] .* is missing or damaged.*check --repair"):
        evaluate(store, metrics="deletion", progress=False, device="cpu")


def test_repair_rebuilds_damaged_metadata_from_its_second_copy(store, capsys):
    intact = {p: p.read_bytes() for p in store.rglob(".z*")}
    (store / ".zmetadata").write_text("{ not json")
    assert cli.main(["check", str(store)]) == 2
    assert "check --repair" in capsys.readouterr().err
    assert cli.main(["check", "--repair", str(store)]) == 0
    assert "rebuilt damaged metadata: .zmetadata" in capsys.readouterr().out
    (store / ".zattrs").write_text("{ not json")  # the group's attrs: the run's whole configuration
    (store / "done" / ".zarray").write_text("garbage")
    assert cli.main(["check", "--repair", str(store)]) == 0
    assert json.loads((store / ".zattrs").read_text()) == json.loads(intact[store / ".zattrs"])
    assert check_store(store).consistent and check_store(store).done == 4


def test_severities_dim_holds_only_the_asked_ones(store, capsys):
    code = cli.main(["evaluate", str(store), "--plugins", str(PLUGIN), "--corruptions", "brightness",
                     "--severities", "1,3", "--perturbed-metrics", "robustness", "--set", "robustness.k=20", "--no-progress",
                     "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    ds = open_store(store)
    assert ds.severity.values.tolist() == [1, 3]
    assert bool(ds["done_corruption"].all())


def test_images_space_or_comma_separated_in_run_and_evaluate(folder, tmp_path, capsys):
    out = tmp_path / "c.zarr"
    files = sorted(folder.iterdir())
    code, err = _run(capsys, [f"{files[0]},{files[1]}", files[2]], out)  # comma list and a second token
    assert code == 0, err
    assert open_store(out).image.values.tolist() == ["im0", "im1", "im2"]
    code = cli.main(["evaluate", str(out), "--plugins", str(PLUGIN), "--metrics", "deletion", "--images", "im0", "im2",
                     "--methods", "ig:black", "--no-progress", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    done = open_store(out)["done_deletion"].sel(model="tiny16", xai_method="ig:black")
    assert done.values.tolist() == [True, False, True]


# --- the command line and the public surface ------------------------------------------------------------

def test_argument_parsing_does_not_import_torch():
    code = ("import sys; from uni_lab import cli; cli.build_parser(); import xarray as xr, uni_lab; "
            "xr.Dataset(attrs={'uni_lab_config': '{\"seed\": 3}'}).uni.config; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_import_uni_lab_registers_the_accessor_and_exports_open_store(store):
    code = f"import xarray as xr, uni_lab; ds = xr.open_zarr({str(store)!r}); print(ds.uni.config['seed'], uni_lab.open_store)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("0 <function open_store")


def test_every_run_flag_is_in_the_user_guide():
    """The hand-written guide (the generated CLI reference lists them anyway) says what every flag does."""
    guide = Path(__file__).parents[1] / "docs" / "guide"
    readme = (guide / "running.md").read_text() + (guide / "evaluate.md").read_text()
    parser, _ = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command in ("run", "evaluate"):
        flags = [o for a in sub[command]._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
        missing = [f for f in flags if f"`{f}" not in readme]
        assert not missing, f"uni-lab {command} flags docs/guide/running.md and evaluate.md do not mention: {missing}"


def test_evaluate_names_the_missing_plugin_and_the_flag(store):
    """A fresh process without the run's --plugins: the store says where its model came from."""
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "uni_lab", "evaluate", str(store), "--metrics", "deletion"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2, out.stderr
    assert f"made with model 'tiny16' from {PLUGIN}" in out.stderr and f"--plugins {PLUGIN}" in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "uni_lab", "evaluate", str(store), "--metrics", "deletion",
                          "--plugins", str(PLUGIN), "--no-progress", "--device", "cpu"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr


def test_default_input_is_the_models_own_centre_crop_and_is_recorded(tmp_path, capsys):
    from PIL import Image

    from uni_lab.data import preprocess

    rng = np.random.default_rng(0)
    arr = (rng.random((20, 40, 3)) * 255).astype(np.uint8)  # wide: squashing and cropping differ
    Image.fromarray(arr).save(tmp_path / "wide.png")
    stores = {}
    for mode in ("model", "full"):
        out = tmp_path / f"{mode}.zarr"
        extra = [] if mode == "model" else ["--resize", "full"]
        code, err = _run(capsys, [tmp_path / "wide.png"], out, *extra)
        assert code == 0, err
        stores[mode] = open_store(out, lazy=False)
    cfg = stores["model"].uni.config
    assert cfg["resize"] == "crop" and cfg["crop_pct"] == 0.875  # tiny16's own crop_pct
    expected = preprocess(arr.astype(np.float32) / 255, (16, 16), "crop", 0.875).numpy()
    np.testing.assert_allclose(stores["model"].input.values[0, 0], expected, atol=1e-6)
    assert stores["full"].uni.config["resize"] == "full" and "crop_pct" not in stores["full"].uni.config
    assert not np.allclose(stores["full"].input.values, stores["model"].input.values)

"""Models and bridges that cannot be trusted as given are refused in one line, never explained silently:
forward functions for methods that need weights, a Quantus bridge that explained another function than
Quantus scores, random weights that changed with every run, and model names or weights files that
ended in a traceback."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image
from torch import nn

import uni_lab
from uni_lab import cli
from uni_lab.captum import IG, MethodAttribution
from uni_lab.evaluation.stored import load_model
from uni_lab.quantus_bridge import explain_func

ARCH = "timm:test_resnet"  # timm's smallest real architecture: a path through create_model, built in milliseconds


def net8(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)).eval()


@uni_lab.model("trust_feature_map")
def trust_feature_map(weights=None):
    """A network without a classification head: a (N, 4, 16, 16) feature map comes out (tests only)."""
    return uni_lab.Classifier(nn.Conv2d(3, 4, 3, padding=1), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(16, 16),
                              name="trust_feature_map")


def test_methods_that_need_weights_or_modules_refuse_a_forward_function():
    net = net8()
    x = torch.rand(2, 3, 16, 16)
    t = net(x).argmax(-1)
    for spec, needs in [("uni", "weights"), ("ig:uni", "weights"), ("guided_backprop", "modules"),
                        ("deeplift", "modules"), ("deeplift_shap", "modules"), ("grad_cam", "layers")]:
        with pytest.raises(uni_lab.InputError, match=rf"needs the model's {needs}.*'<lambda>' has no parameters.*"
                                                     r"pass the nn.Module itself"):
            MethodAttribution(lambda z: net(z), spec).attribute(x, target=t)
    # methods that need only outputs and input gradients still take a function, and the module itself
    # keeps the train/eval flags its caller gave it
    torch.testing.assert_close(IG(lambda z: net(z)).attribute(x, target=t, n_steps=2),
                               IG(net).attribute(x, target=t, n_steps=2))
    net.train()
    IG(net).attribute(x, target=t, n_steps=2)
    explain_func(net, x.numpy(), t.numpy(), steps=2)
    assert all(m.training for m in net.modules())


def test_quantus_bridge_explains_the_function_quantus_scores():
    """Quantus scores ``model(x)``: the raw output of the module as given, no normalisation added."""
    net = net8(1)
    x = torch.rand(3, 3, 16, 16)
    t = net(x).argmax(-1)
    same = uni_lab.wrap(net, mean=(0, 0, 0), std=(1, 1, 1))
    for method, params in (("ig:black", {"steps": 4}), ("saliency", {})):
        ours = torch.from_numpy(explain_func(net, x.numpy(), t.numpy(), method=method, **params))
        ref = uni_lab.explain(method, same, x, t, output="logit", **params).attribution
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    # a saliency map is the gradient of what was explained: here the logit Quantus's predict returns
    xg = x.clone().requires_grad_(True)
    net(xg).gather(1, t.view(-1, 1)).sum().backward()
    torch.testing.assert_close(torch.from_numpy(explain_func(net, x.numpy(), t.numpy(), method="saliency")).abs(),
                               xg.grad.abs(), rtol=1e-5, atol=1e-7)
    with pytest.raises(uni_lab.InputError, match="different functions"):
        explain_func(net, x.numpy(), t.numpy(), output="logit", softmax=True)


def test_random_weights_come_from_the_run_seed_and_a_store_rebuilds_them(tmp_path):
    state = torch.get_rng_state()
    a = uni_lab.create_model(ARCH, weights="random", seed=3)
    b = uni_lab.create_model(ARCH, weights="random", seed=3)
    c = uni_lab.create_model(ARCH, weights="random", seed=4)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is not consumed
    first = next(iter(a.state_dict()))
    assert torch.equal(a.state_dict()[first], b.state_dict()[first])
    assert not torch.equal(a.state_dict()[first], c.state_dict()[first])
    assert a.describe()["seed"] == 3 and a.describe()["weights"] == "random"
    rebuilt = load_model(ARCH, a.describe(), {})
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in a.state_dict().items())

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    stores = []
    for name in ("a.zarr", "b.zarr"):  # the same command twice: the same store
        assert cli.main(["run", "--model", ARCH, "--weights", "random", "--seed", "5", "--methods", "saliency",
                         "--images", str(tmp_path / "i.png"), "--out", str(tmp_path / name), "--no-progress",
                         "--resize", "full"]) == 0
        stores.append(xr.open_zarr(tmp_path / name))
    np.testing.assert_array_equal(stores[0].attribution.values, stores[1].attribution.values)
    assert '"seed": 5' in stores[0].attrs["uni_lab_config"]
    # and `uni-lab evaluate` rebuilds that model, checked against the stored predictions
    assert cli.main(["evaluate", str(tmp_path / "a.zarr"), "--metrics", "completeness_error", "--no-progress"]) == 0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Weights files that are not what --weights wants, next to a good one."""
    d = tmp_path_factory.mktemp("weights")
    net = uni_lab.create_model(ARCH, weights="random").net
    state = net.state_dict()
    torch.save(net, d / "whole_model.pt")
    torch.save({k: v.long() for k, v in state.items()}, d / "int64.pt")
    renamed = {(f"old.{k}" if i < 4 else k): v for i, (k, v) in enumerate(state.items())}
    torch.save(renamed, d / "renamed.pt")
    k0 = next(iter(state))
    torch.save({**state, k0: torch.full_like(state[k0], float("nan"))}, d / "nan.pt")
    torch.save(state, d / "good.pt")
    (d / "truncated.pt").write_bytes((d / "good.pt").read_bytes()[:50_000])
    (d / "empty.pt").write_bytes(b"")
    (d / "text.pt").write_text("hello, not weights\n")
    (d / "folder.pt").mkdir()
    from safetensors.torch import save_file

    save_file(state, d / "good.safetensors")
    (d / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    os.mkfifo(d / "fifo.pt")  # opening it would block: it must be refused without reading
    return d


CASES = [  # (--model, --weights relative to the files fixture or None, the one line expected)
    ("", None, r"model name '' names no model"),
    (" ", None, r"model name '' names no model"),
    ("tv:", "random", r"model name 'tv:' names no model"),
    ("timm:nonexistent", None, r"unknown model 'timm:nonexistent'"),
    ("trust_feature_map", None, r"model 'trust_feature_map' returns a tensor of shape \(1, 4, 16, 16\).*"
                                r"not \(images, classes\) logits"),
    (ARCH, "whole_model.pt", r"holds a pickled timm\.models\.resnet\.ResNet.*torch\.save\(model\.state_dict\(\)"),
    (ARCH, "int64.pt", r"integer tensors for floating parameters \(conv1\.0\.weight: torch\.int64"),
    (ARCH, "renamed.pt", r"4 missing \(conv1\.0\.weight, conv1\.1\.weight, conv1\.1\.bias and 1 more\); "
                         r"4 unexpected \(old\.conv1\.0\.weight"),
    (ARCH, "nan.pt", r"hold NaN or infinite values in conv1\.0\.weight"),
    (ARCH, "truncated.pt", r"not the zip archive torch\.save writes \(another format, or a truncated"),
    (ARCH, "text.pt", r"not the zip archive torch\.save writes"),
    (ARCH, "empty.pt", r"weights file '.*empty\.pt' is empty"),
    (ARCH, "folder.pt", r"weights file '.*folder\.pt' is a folder"),
    (ARCH, "fifo.pt", r"weights file '.*fifo\.pt' is not a regular file"),
    (ARCH, "missing.pt", r"weights file '.*missing\.pt' does not exist"),
    (ARCH, "", r"the weights path is empty"),
    (ARCH, "bad.safetensors", r"weights file '.*bad\.safetensors' is not a readable \.safetensors file"),
]


def test_safetensors_weights_load_like_a_state_dict(files):
    a = uni_lab.create_model(ARCH, weights=str(files / "good.pt"))
    b = uni_lab.create_model(ARCH, weights=str(files / "good.safetensors"))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("model,weights,message", CASES, ids=[f"{m or repr(m)}-{w}" for m, w, _ in CASES])
def test_bad_models_and_weights_are_one_line_before_anything_is_written(model, weights, message, files, tmp_path,
                                                                         capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "i.png")
    args = ["run", "--model", model, "--images", str(tmp_path / "i.png"), "--methods", "saliency", "--out",
            str(tmp_path / "s.zarr"), "--no-progress"]
    if weights is not None:
        args += ["--weights", weights if weights in ("random", "") else str(files / weights)]
    capsys.readouterr()
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("uni-lab run: error: ") and err.count("\n") == 1 and "\x1b" not in err, err
    assert re.search(message, err), err
    assert not (tmp_path / "s.zarr").exists()

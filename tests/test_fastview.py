"""The fast view (batch norm folded, channels-last on CPU): same function, user's model untouched."""
from __future__ import annotations

import copy

import pytest
import torch
import xarray as xr
from torch import nn

import uni_lab
from uni_lab import fastview
from uni_lab.engine import score_and_grad
from uni_lab.fastview import FastView, fast_view, fold_batchnorm


class BNNet(nn.Module):
    """conv→BN→ReLU, a timm BatchNormAct2d, a conv whose raw output also feeds a skip (must not
    fold), and a BN shared by two calls (must not fold)."""

    def __init__(self):
        super().__init__()
        from timm.layers import BatchNormAct2d

        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), BatchNormAct2d(8, act_layer=nn.ReLU6)
        self.c3, self.b3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.c4, self.shared = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = self.b2(self.c2(x))
        raw = self.c3(x)
        x = self.b3(raw) + raw  # c3's output has two users
        x = self.shared(self.c4(x)) + self.shared(x)
        return self.head(x.mean((2, 3)))


def _randomise_bn(net: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return net.eval()


@pytest.fixture
def bn_clf():
    torch.manual_seed(0)
    return uni_lab.wrap(_randomise_bn(BNNet()), input_size=(16, 16), name="bn")


def test_folds_exactly_the_safe_pairs(bn_clf):
    gm, folded = fold_batchnorm(copy.deepcopy(bn_clf.net))
    assert folded == 2  # b1 and b2; not b3 (raw output reused), not the shared BN
    kinds = {name: type(m).__name__ for name, m in gm.named_modules()}
    assert kinds["b1"] == "Identity" and kinds["b2"] == "Sequential"
    assert kinds["b3"] == "BatchNorm2d" and kinds["shared"] == "BatchNorm2d"


def test_view_computes_the_same_scores_and_gradients(bn_clf):
    x = torch.rand(6, 3, 16, 16)
    t = torch.arange(6) % 4
    view = fast_view(bn_clf, x)
    assert isinstance(view, FastView) and view.folded == 2
    with torch.no_grad():
        torch.testing.assert_close(view(x), bn_clf(x), rtol=1e-5, atol=1e-5)
    fast = score_and_grad(bn_clf, x, t, "logit")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(fastview.ENV, "0")
        assert fast_view(bn_clf, x) is bn_clf
        plain = score_and_grad(bn_clf, x, t, "logit")
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_users_model_is_untouched_and_view_cached(bn_clf):
    before = {k: v.clone() for k, v in bn_clf.state_dict().items()}
    ids = [id(p) for p in bn_clf.parameters()]
    x = torch.rand(2, 3, 16, 16)
    view = fast_view(bn_clf, x)
    assert fast_view(bn_clf, x) is view  # built once
    assert fast_view(view, x) is view  # a view passes through
    score_and_grad(view, x, torch.zeros(2, dtype=torch.long))
    assert [id(p) for p in bn_clf.parameters()] == ids
    assert all(p.grad is None for p in bn_clf.parameters())
    for k, v in bn_clf.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert type(bn_clf.net.b1) is nn.BatchNorm2d  # the copy was folded, not the model


def test_view_follows_weight_changes(bn_clf):
    x = torch.rand(3, 3, 16, 16)
    old = fast_view(bn_clf, x)
    with torch.no_grad():
        bn_clf.net.c1.weight.mul_(2.0)  # in place: version counter moves
    new = fast_view(bn_clf, x)
    assert new is not old
    with torch.no_grad():
        torch.testing.assert_close(new(x), bn_clf(x), rtol=1e-5, atol=1e-5)
        bn_clf.net.b2.running_var = bn_clf.net.b2.running_var * 3  # a replaced buffer
    newer = fast_view(bn_clf, x)
    assert newer is not new
    with torch.no_grad():
        torch.testing.assert_close(newer(x), bn_clf(x), rtol=1e-5, atol=1e-5)


def test_hooks_training_mode_and_untraceable_models_run_as_given(bn_clf, tiny_model):
    x = torch.rand(2, 3, 16, 16)
    handle = bn_clf.net.c2.register_forward_hook(lambda *a: None)
    try:
        assert fast_view(bn_clf, x) is bn_clf
    finally:
        handle.remove()

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.b = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent: torch.fx cannot trace it
                x = x * 2
            return self.b(self.c(x)).mean((2, 3))

    branchy = Branchy().eval()
    view = fast_view(branchy, x)
    assert isinstance(view, FastView) and view.inner is branchy and view.folded == 0
    branchy.train()
    assert fast_view(branchy, x) is branchy
    # no batch norm at all: only the layout changes, and the view holds the model itself
    tiny_view = fast_view(tiny_model, x)
    assert tiny_view.inner is tiny_model and tiny_view.folded == 0


def test_a_view_that_disagrees_is_dropped(bn_clf, monkeypatch, caplog):
    x = torch.rand(2, 3, 16, 16)

    def wrong(net):
        gm, n = fold_batchnorm(net)
        with torch.no_grad():
            gm.c1.weight.add_(1.0)
        return gm, n

    monkeypatch.setattr(fastview, "fold_batchnorm", wrong)
    view = fast_view(bn_clf, x)
    assert view.folded == 0 and view.inner is bn_clf
    assert "disagrees" in caplog.text


def test_embedded_model_folds_every_batch_norm():
    clf = uni_lab.create_model("efficientnet_lite0")
    x = torch.rand(2, 3, 64, 64)
    view = fast_view(clf, x)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in clf.modules())
    assert view.folded == n_bn == 49
    with torch.no_grad():
        ref = clf(x)
        torch.testing.assert_close(view(x), ref, rtol=0, atol=1e-4 * float(ref.abs().max()))


def test_unlearning_sees_the_model_as_given(bn_clf):
    """UNI's unlearning records through the folded view but steps the model's own parameters
    (batch-norm scales included), never the folded copy's: it still equals the per-image reference."""
    from uni_lab.plugins.uni import unlearned_log_probs, unlearned_log_probs_reference

    m64 = copy.deepcopy(bn_clf).double()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    t = torch.tensor([0, 1, 2])
    assert fast_view(m64, x).folded == 2
    torch.testing.assert_close(unlearned_log_probs(m64, x, t), unlearned_log_probs_reference(m64, x, t),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("setting", ["1", "0"])
def test_the_run_records_the_view_and_resumes_only_with_it(tiny_model, tmp_path, monkeypatch, setting):
    """The setting is part of a run's configuration: UNI's sign-PGD turns the view's rounding into
    other baselines, so one store must not mix the two. The refusal says how to match it."""
    from uni_lab.accessor import config_of

    monkeypatch.setenv(fastview.ENV, setting)
    kw = dict(images=["chelsea"], methods=["ig:black"], steps=2, out=tmp_path / "s.zarr", progress=False)
    res = uni_lab.run(tiny_model, **kw)
    assert config_of(xr.open_zarr(res.path))["fast_view"] == {"1": "on", "0": "off"}[setting]
    monkeypatch.setenv(fastview.ENV, "0" if setting == "1" else "1")
    with pytest.raises(uni_lab.StoreError, match=f"differs in: fast_view.*UNI_LAB_FAST_VIEW={setting}"):
        uni_lab.run(tiny_model, **kw)


def test_evaluate_recomputes_with_the_stores_setting(tiny_model, tmp_path, monkeypatch):
    """A store made without the view (or before it existed) is evaluated without it, whatever
    the environment says, and the other way round."""
    seen = []
    real = fastview.fast_view
    monkeypatch.setattr(fastview, "fast_view", lambda *a, **k: seen.append(fastview.enabled()) or real(*a, **k))
    monkeypatch.setattr(uni_lab.engine, "fast_view", fastview.fast_view)
    monkeypatch.setenv(fastview.ENV, "0")
    res = uni_lab.run(tiny_model, images=["chelsea"], methods=["ig:black"], steps=2, out=tmp_path / "s.zarr",
                      progress=False)
    monkeypatch.setenv(fastview.ENV, "1")
    seen.clear()
    from uni_lab import evaluate

    evaluate(res.path, metrics=["completeness_error"], attacks=["random_noise"], sets={"robustness.k": 10},
             progress=False, models=[tiny_model])
    assert seen and not any(seen)
    assert fastview.enabled()  # the environment's setting again after evaluate

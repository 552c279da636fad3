"""UNI's unlearning hands ∇F_c at x itself to the path integral, which then runs one gradient pass fewer."""
from __future__ import annotations

import copy

import pytest
import torch

import uni_lab
import uni_lab.engine as engine
from test_batched_uni import TinyBN
from uni_lab import endpoint
from uni_lab.plugins.ig import integrated_gradients
from uni_lab.plugins.uni import uni

STEPS = 6


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(3)
    model = uni_lab.wrap(TinyBN(), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(16, 16), name="tiny_bn")
    model = copy.deepcopy(model).double()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        target = model(x).argmax(-1)
    return model, x, target


@pytest.fixture
def passes(monkeypatch):
    """Images through gradient passes, counted."""
    seen = [0]
    real = engine.score_and_grad

    def counted(model, x, *args, **kwargs):
        seen[0] += x.shape[0]
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(engine, "score_and_grad", counted)
    return seen


def _from_baseline(model, x, target, baseline, output="prob"):
    """The same integral with every point's gradient from a pass of its own (no scope: nothing offered)."""
    return integrated_gradients(model, x, target, baseline=baseline, steps=STEPS, output=output)


def test_uni_uses_the_unlearning_gradient_at_x_and_skips_that_pass(setup, passes):
    model, x, target = setup
    exp = uni(model, x, target, seeds=torch.tensor([1, 2, 3]), steps=STEPS)
    assert passes[0] == (STEPS - 1) * x.shape[0]  # the baseline costs a forward, x itself nothing
    passes[0] = 0
    ref = _from_baseline(model, x, target, exp.baseline)
    assert passes[0] == STEPS * x.shape[0]
    # −F_c ∇CE_c and ∇F_c are the same gradient: in float64 the maps and traces agree to rounding
    torch.testing.assert_close(exp.attribution, ref.attribution, rtol=1e-9, atol=1e-12)
    for k in ("prob", "logit", "alpha", "distance"):
        torch.testing.assert_close(exp.trace[k], ref.trace[k], rtol=1e-9, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(exp.completeness_error, ref.completeness_error, rtol=1e-6, atol=1e-12)


def test_the_logit_output_and_other_inputs_take_no_offer(setup, passes):
    model, x, target = setup
    uni(model, x, target, seeds=torch.tensor([1, 2, 3]), steps=STEPS, output="logit")
    assert passes[0] == STEPS * x.shape[0]
    g, p, l = torch.ones_like(x), torch.ones(3, dtype=x.dtype), torch.ones(3, dtype=x.dtype)
    with endpoint.collecting():
        endpoint.offer(x, target, g, p, l)
        assert endpoint.take(x, target, "prob", "right") is not None
        assert endpoint.take(x, target, "logit", "right") is None
        assert endpoint.take(x, target, "prob", "left") is None
        assert endpoint.take(x + 1e-9, target, "prob", "right") is None
        assert endpoint.take(x, (target + 1) % 4, "prob", "right") is None
        assert endpoint.take(x[:2], target[:2], "prob", "right") is None
    assert endpoint.take(x, target, "prob", "right") is None  # out of scope: nothing held


def test_an_offered_gradient_is_the_one_integrated(setup):
    """The point at α = 1 takes exactly what was offered: a gradient of twice the true one adds
    one more last term to the map."""
    model, x, target = setup
    xb = torch.zeros_like(x)
    ref = _from_baseline(model, x, target, xb)
    g, p, l = engine.score_and_grad(model, x, target)
    with endpoint.collecting():
        endpoint.offer(x, target, 2 * g, p, l)
        ibs, chunk = engine.path_chunk(model, x, None)
        got = engine.integrate(model, x, target, engine.fixed_path(engine.straight_path, x, xb, STEPS, chunk),
                               internal_batch_size=ibs, baseline_gradient=False)
    last_step = x - engine.straight_path(x, xb, torch.tensor([(STEPS - 1) / STEPS], dtype=x.dtype))[0]
    torch.testing.assert_close(got.attribution, ref.attribution + g * last_step, rtol=1e-9, atol=1e-12)

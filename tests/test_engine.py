"""The path engine: IG against Captum, completeness, traces, chunking."""
import pytest
import torch
from captum.attr import IntegratedGradients

import uni_lab
from uni_lab.errors import InputError


def _captum_ig(model, x, target, baseline, steps, output):
    fwd = (lambda z: model(z).softmax(-1)) if output == "prob" else model
    return IntegratedGradients(fwd).attribute(x, baselines=baseline, target=target, n_steps=steps,
                                              method="riemann_right")


@pytest.mark.parametrize("output", ["prob", "logit"])
@pytest.mark.parametrize("baseline", ["black", "blur"])
def test_ig_equals_captum_riemann_right(tiny_model, tiny_batch, output, baseline):
    x, _ = tiny_batch
    x = x.double()
    model = tiny_model.double()
    try:
        target = model(x).argmax(-1)
        exp = uni_lab.explain(f"ig:{baseline}", model, x, target, steps=16, output=output)
        ref = _captum_ig(model, x, target, exp.baseline, 16, output)
        rel = (exp.attribution - ref).abs().max() / ref.abs().max()
        assert rel < 1e-5, f"max relative difference {rel:.2e}"
    finally:
        model.float()


def test_ig_chunking_does_not_change_the_result(tiny_model, tiny_batch):
    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    whole = uni_lab.explain("ig:black", tiny_model, x, target, steps=10, internal_batch_size=1000)
    chunks = uni_lab.explain("ig:black", tiny_model, x, target, steps=10, internal_batch_size=3)
    torch.testing.assert_close(whole.attribution, chunks.attribution, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(whole.trace["prob"], chunks.trace["prob"])


def test_path_chunks_fill_the_passes_the_plan_allows(tiny_model, tiny_batch, monkeypatch):
    """Where the plan holds fewer samples than asked, path chunks shrink to fill one pass each,
    and a chunk that needs several passes splits evenly: no pass of a few leftover samples."""
    from uni_lab.accel import activation_bytes
    from uni_lab.engine import PASS_ACTIVATION_COPIES, _passes, path_chunk

    assert [(p.start, p.stop) for p in _passes(64, 20)] == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert [(p.start, p.stop) for p in _passes(65, 64)] == [(0, 33), (33, 65)] and _passes(0, 8) == []
    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    whole = uni_lab.explain("ig:black", tiny_model, x, target, steps=10)
    per_sample = PASS_ACTIVATION_COPIES * activation_bytes(tiny_model, x[:1])
    monkeypatch.setitem(uni_lab.accel.PLAN_BYTES, "cpu", int(per_sample * 2.5 * x.shape[0]))
    assert path_chunk(tiny_model, x, 64) == (2 * x.shape[0] + x.shape[0] // 2, 2)
    sizes = []
    monkeypatch.setattr(uni_lab.engine, "score_and_grad", _recording(uni_lab.engine.score_and_grad, sizes))
    small = uni_lab.explain("ig:black", tiny_model, x, target, steps=10)
    assert sizes == [x.shape[0]] + [2 * x.shape[0]] * 4 + [x.shape[0]]  # α 1, then pairs, then α 10
    torch.testing.assert_close(whole.attribution, small.attribution, rtol=1e-5, atol=1e-7)


def _recording(fn, sizes):
    def wrapped(model, x, *args, **kwargs):
        sizes.append(x.shape[0])
        return fn(model, x, *args, **kwargs)
    return wrapped


def test_completeness_error_shrinks_as_steps_grow(tiny_model, tiny_batch):
    """Explaining the logit (the tiny model's softmax is saturated, so F_c(x) − F_c(x') ≈ 0 in
    probability for some images): for every image the completeness error strictly falls over
    B = 4, 16, 64, 256, and is below 1% of |F_c(x) − F_c(x')| at B = 256."""
    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    errs = [uni_lab.explain("ig:black", tiny_model, x, target, steps=b, output="logit").completeness_error
            for b in (4, 16, 64, 256)]
    for coarse, fine in zip(errs, errs[1:]):
        assert torch.all(fine < coarse), (coarse, fine)
    assert errs[-1].max() < 0.01


def test_trace_records_every_step(tiny_model, tiny_batch):
    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    exp = uni_lab.explain("ig:black", tiny_model, x, target, steps=8)
    assert set(exp.trace) == {"alpha", "prob", "logit", "grad_norm", "distance"}
    for v in exp.trace.values():
        assert v.shape == (4, 9)
    torch.testing.assert_close(exp.trace["alpha"][0], torch.linspace(0, 1, 9))
    assert torch.allclose(exp.trace["distance"][:, -1], torch.zeros(4))
    torch.testing.assert_close(exp.trace["distance"][:, 0], x.flatten(1).norm(dim=1))
    probs = tiny_model(x).softmax(-1).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(exp.trace["prob"][:, -1], probs)
    torch.testing.assert_close(exp.trace["prob"][:, 0], tiny_model(torch.zeros_like(x)).softmax(-1)[:, target].diagonal())


def test_nan_input_is_a_clear_error(tiny_model, tiny_batch):
    x = tiny_batch[0].clone()
    x[2, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"NaN or Inf.*positions \[2\]"):
        uni_lab.explain("ig:black", tiny_model, x, torch.zeros(4, dtype=torch.long))


def test_bad_output_is_a_clear_error(tiny_model, tiny_batch):
    with pytest.raises(InputError, match="output must be one of"):
        uni_lab.explain("ig:black", tiny_model, tiny_batch[0], output="softmax")


@pytest.mark.parametrize("internal_batch_size", [1000, 4, 3])
def test_closed_form_paths_skip_the_unused_baseline_gradient(tiny_model, tiny_batch, internal_batch_size):
    """The right sum ignores ∇F_c at α = 0: without that backward the map, scores and the rest
    of the trace are the same, and only the baseline's grad_norm is missing (NaN)."""
    from uni_lab.engine import fixed_path, integrate, straight_path

    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    xb = torch.zeros_like(x)
    runs = [integrate(tiny_model, x, target, fixed_path(straight_path, x, xb, 8, max(1, internal_batch_size // 4)),
                      internal_batch_size=internal_batch_size, baseline_gradient=flag) for flag in (True, False)]
    full, lean = runs
    torch.testing.assert_close(lean.attribution, full.attribution)
    torch.testing.assert_close(lean.completeness_error, full.completeness_error)
    for key in ("alpha", "prob", "logit", "distance"):
        torch.testing.assert_close(lean.trace[key], full.trace[key])
    assert torch.isnan(lean.trace["grad_norm"][:, 0]).all() and torch.isfinite(full.trace["grad_norm"][:, 0]).all()
    torch.testing.assert_close(lean.trace["grad_norm"][:, 1:], full.trace["grad_norm"][:, 1:])
    ig = uni_lab.explain("ig:black", tiny_model, x, target, steps=8, internal_batch_size=internal_batch_size)
    assert torch.isnan(ig.trace["grad_norm"][:, 0]).all()

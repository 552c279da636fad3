"""Batched per-image unlearning against the naive per-image reference, and the accelerator
options (memory-sized passes, autocast, channels_last) against plain fp32."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import uni_lab
from conftest import make_data
from uni_lab import accel
from uni_lab.accel import TOLERANCE, AcceleratedClassifier, accelerate, fit_batch, parse_bytes
from uni_lab.engine import integrate, pass_size
from uni_lab.errors import InputError
from uni_lab.persample import Outer, dense, per_sample_grads
from uni_lab.plugins.ig import integrated_gradients
from uni_lab.plugins.uni import (uni_baseline, uni_baseline_reference, unlearn_chunk_size, unlearned_log_probs,
                                 unlearned_log_probs_reference)

SEEDS = torch.tensor([11, 22, 33, 44])


class TinyBN(nn.Module):
    """Every layer kind the batched unlearning has its own formula for: BatchNorm with running
    statistics followed by an in-place activation (as timm's BatchNormAct2d), strided,
    unstrided and dilated depthwise convs (the strided one with a channel multiplier), a grouped conv,
    pointwise convs with and without bias, a linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.dw_s2 = nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=6, bias=False)
        self.grouped = nn.Conv2d(12, 8, 3, padding=1, groups=2)
        self.pw = nn.Conv2d(8, 6, 1)
        self.dw = nn.Conv2d(6, 6, 5, padding=2, groups=6)
        self.dw_dil = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6)
        self.pw_s2 = nn.Conv2d(6, 6, 1, stride=2, bias=False)
        self.head = nn.Linear(6 * 4 * 4, 4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        h = nn.functional.relu6(self.bn(self.conv(x)), inplace=True)
        h = torch.relu(self.pw(torch.relu(self.grouped(self.dw_s2(h)))))
        h = self.pw_s2(torch.relu(self.dw_dil(torch.relu(self.dw(h)))))
        return self.head(nn.functional.adaptive_avg_pool2d(h, 4).flatten(1))


class TinyLN(nn.Module):
    """A layer norm: not covered by the batched formulas, so unlearning must fall back to vmap."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(4 * 8 * 8)
        self.head = nn.Linear(4 * 8 * 8, 4)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x).flatten(1))))


def _double(clf):
    return copy.deepcopy(clf).double()


@pytest.fixture(scope="module")
def bn_model():
    torch.manual_seed(3)
    return uni_lab.wrap(TinyBN(), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(16, 16), name="tiny_bn")


@pytest.fixture(params=["tiny", "bn", "ln"])
def model_and_batch(request, tiny_model, tiny_batch, bn_model):
    torch.manual_seed(5)
    ln = uni_lab.wrap(TinyLN(), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(16, 16), name="tiny_ln")
    model = {"tiny": tiny_model, "bn": bn_model, "ln": ln}[request.param]
    x = tiny_batch[0]
    with torch.no_grad():
        target = model(x).argmax(-1)
    return model, x, target


def test_unlearned_log_probs_match_reference_in_float64(model_and_batch):
    model, x, target = model_and_batch
    m64 = _double(model)
    # the batched formulas cover conv/linear/batch-norm nets; a layer norm is left to vmap
    assert (per_sample_grads(m64, x.double(), target) is None) == (model.name == "tiny_ln")
    reference = unlearned_log_probs_reference(m64, x.double(), target, eta=1.0)
    for method in ("auto", "vmap"):
        batched = unlearned_log_probs(m64, x.double(), target, eta=1.0, method=method)
        assert batched.shape == (x.shape[0], 4)
        assert torch.allclose(batched, reference, rtol=0, atol=1e-10), method
    grads = per_sample_grads(m64, x.double(), target)
    if grads is not None:  # and each image's gradient is the one autograd gives for it alone
        for i in range(x.shape[0]):
            m64.zero_grad()
            nn.functional.cross_entropy(m64(x[i:i + 1].double()), target[i:i + 1]).backward()
            for k, p in m64.named_parameters():
                assert torch.allclose(grads[k][i], p.grad, rtol=0, atol=1e-10), k
        m64.zero_grad(set_to_none=True)
        factored = per_sample_grads(m64, x.double(), target, factored=True)  # linear weights as Outer factors
        assert any(isinstance(g, Outer) for g in factored.values())
        for k, g in grads.items():
            assert torch.allclose(dense(factored[k]), g, rtol=0, atol=1e-12), k
    # unlearning must move the prediction away from the explained class (the trained tiny
    # model is saturated, p_c = 1 - 1e-30: its cross-entropy gradient is zero, nothing moves)
    with torch.no_grad():
        before = m64(x.double()).log_softmax(-1).gather(1, target[:, None])
    after = batched.gather(1, target[:, None])
    assert (after < before).all() if model.name != "tiny" else (after <= before + 1e-12).all()


def test_unlearned_log_probs_match_reference_in_float32(model_and_batch):
    model, x, target = model_and_batch
    batched = unlearned_log_probs(model, x, target, eta=1.0)
    reference = unlearned_log_probs_reference(model, x, target, eta=1.0)
    assert torch.allclose(batched.exp(), reference.exp(), rtol=0, atol=1e-5)


def test_uni_baseline_batched_equals_naive_reference(model_and_batch):
    model, x, target = model_and_batch
    m64, x64 = _double(model), x.double()
    for norm in ("linf", "l2"):
        # a uniform start: from x itself the tiny nets' KL gradients are near zero, and sign steps
        # turn 1e-10 differences of near-zero gradients into whole steps of μ
        batched = uni_baseline(x64, m64, target, seeds=SEEDS, norm=norm, pgd_steps=5, start="uniform")
        naive = uni_baseline_reference(x64, m64, target, seeds=SEEDS, norm=norm, pgd_steps=5, start="uniform")
        assert torch.allclose(batched, naive, rtol=0, atol=1e-9), norm
        assert (batched - x64).abs().max() <= 0.05 + 1e-9 if norm == "linf" else True
        assert not torch.allclose(batched, x64)


def test_uni_attributions_batched_equal_naive(tiny_model, tiny_batch):
    m64, x64 = _double(tiny_model), tiny_batch[0].double()
    target = m64(x64).argmax(-1)
    batched = uni_lab.get("explainer", "uni")(m64, x64, target, seeds=SEEDS, steps=8)
    naive_baseline = uni_baseline_reference(x64, m64, target, seeds=SEEDS)
    naive = integrated_gradients(m64, x64, target, baseline=naive_baseline, steps=8)
    assert torch.allclose(batched.attribution, naive.attribution, rtol=0, atol=1e-10)
    assert torch.allclose(batched.trace["prob"], naive.trace["prob"], rtol=0, atol=1e-10)


def test_chunking_and_memory_budget_do_not_change_results(bn_model, tiny_batch, monkeypatch):
    x = tiny_batch[0]
    target = bn_model(x).argmax(-1)
    full = unlearned_log_probs(bn_model, x, target, chunk=4)
    for chunk in (1, 3):
        assert torch.allclose(unlearned_log_probs(bn_model, x, target, chunk=chunk), full, atol=1e-6)
    assert unlearn_chunk_size(bn_model, x) == 16  # a tiny model fits the default plan whole
    monkeypatch.setitem(accel.PLAN_BYTES, "cpu", 1024)
    assert unlearn_chunk_size(bn_model, x) == 1
    assert pass_size(bn_model, x, 64) == 1
    assert torch.allclose(unlearned_log_probs(bn_model, x, target), full, atol=1e-6)
    tight = uni_lab.get("explainer", "ig")(bn_model, x, target, steps=2)
    monkeypatch.undo()
    loose = uni_lab.get("explainer", "ig")(bn_model, x, target, steps=2)
    assert torch.allclose(tight.attribution, loose.attribution, atol=1e-6)


def test_memory_budget_parsing_and_bad_chunk():
    assert parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("512m") == 512 * 2**20 and parse_bytes("1000") == 1000
    with pytest.raises(InputError, match="not a size"):
        parse_bytes("lots")
    assert fit_batch(10**18, "cpu", cap=8) == 1
    with pytest.raises(InputError, match="unlearn_chunk"):  # declared in the signature, refused before any compute
        uni_lab.get("baseline", "uni").validate({"unlearn_chunk": 0})


def test_unlearning_never_writes_the_model(bn_model, tiny_batch):
    before = {k: v.clone() for k, v in bn_model.state_dict().items()}
    x = tiny_batch[0]
    uni_baseline(x, bn_model, bn_model(x).argmax(-1), seeds=SEEDS, pgd_steps=2)
    after = bn_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in bn_model.parameters())


def test_path_not_starting_at_zero_is_still_rejected(tiny_model, tiny_batch):
    x = tiny_batch[0]

    def bad_path():
        yield torch.tensor([0.5, 1.0]), torch.stack([x * 0.5, x])

    with pytest.raises(InputError, match="alpha = 0"):
        integrate(tiny_model, x, tiny_model(x).argmax(-1), bad_path())


def _rel_l2(a, b):
    return float((a - b).norm() / b.norm())


def test_channels_last_matches_fp32(bn_model, tiny_batch):
    # IG, not UNI: UNI's signed PGD steps turn any float-level change (layout, batch, device)
    # into a full step on pixels whose gradient is near zero, which says nothing about layout.
    x = tiny_batch[0]
    target = bn_model(x).argmax(-1)
    ref = uni_lab.get("explainer", "ig")(bn_model, x, target, steps=6)
    fast = accelerate(copy.deepcopy(bn_model), "fp32", channels_last=True)
    assert isinstance(fast, AcceleratedClassifier)
    got = uni_lab.get("explainer", "ig")(fast, x, target, steps=6)
    assert _rel_l2(got.attribution, ref.attribution) < TOLERANCE["fp32"]
    assert "precision" not in fast.describe()
    # and UNI runs under it (per-image unlearning cannot pick layouts inside vmap)
    assert torch.isfinite(uni_lab.get("explainer", "uni")(fast, x, target, seeds=SEEDS, steps=2).attribution).all()


def test_bf16_autocast_stays_within_stated_tolerance(tiny_model, tiny_batch):
    x = tiny_batch[0]
    target = tiny_model(x).argmax(-1)
    ref = uni_lab.get("explainer", "ig")(tiny_model, x, target, steps=8)
    bf16 = accelerate(tiny_model, "bf16")
    assert bf16.net is tiny_model.net  # shared, not copied
    assert bf16(x).dtype == torch.float32
    got = uni_lab.get("explainer", "ig")(bf16, x, target, steps=8)
    err = _rel_l2(got.attribution, ref.attribution)
    assert 0 < err < TOLERANCE["bf16"], err  # > 0: autocast really ran in reduced precision
    assert bf16.describe()["precision"] == "bf16"
    with pytest.raises(InputError, match="precision"):
        accelerate(tiny_model, "fp8")


def test_uni_baseline_is_bitwise_the_same_in_any_batch(tiny_model):
    """Matching runs in fixed-size padded chunks: an image's baseline does not depend on the batch it
    arrives in (PGD amplifies a batched forward's rounding, which depends on the batch size)."""
    x = make_data(n=7, seed=5)[0]
    with torch.no_grad():
        target = tiny_model(x).argmax(-1)
    seeds = torch.arange(7) + 100
    base = uni_lab.get("baseline", "uni")
    params = {"start": "uniform", "pgd_steps": 6}
    full = base(x, tiny_model, target, seeds=seeds, **params)
    for sel in ([0], [4, 0], [6, 5, 4, 3, 2]):
        part = base(x[sel], tiny_model, target[sel], seeds=seeds[sel], **params)
        for k, i in enumerate(sel):
            assert torch.equal(part[k], full[i]), (sel, i)


class SmallMaps(nn.Module):
    """3×3 convs on 2×2 maps (with and without padding), whose per-image gradients are cheaper kept
    as factors of their unfolded input, after a 3×3 conv on a larger map, which stays dense."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.same = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.down(torch.relu(self.stem(x))))
        return self.head(torch.relu(self.same(h)).mean((2, 3)))


def test_kxk_convs_on_small_maps_stay_factored_and_exact():
    torch.manual_seed(9)
    model = uni_lab.wrap(SmallMaps(), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(8, 8), name="small_maps")
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    target = model(x).argmax(-1)
    m64, x64 = _double(model), x.double()
    grads = per_sample_grads(m64, x64, target)
    factored = per_sample_grads(m64, x64, target, factored=True)
    assert not isinstance(factored["net.stem.weight"], Outer)  # 16 positions of 27 inputs: dense
    for name in ("net.down.weight", "net.same.weight"):
        assert isinstance(factored[name], Outer), name
    for k, g in grads.items():
        assert torch.allclose(dense(factored[k]), g, rtol=0, atol=1e-12), k
    reference = unlearned_log_probs_reference(m64, x64, target, eta=1.0)
    assert torch.allclose(unlearned_log_probs(m64, x64, target, eta=1.0), reference, rtol=0, atol=1e-10)
    whole = unlearned_log_probs(model, x, target)
    for s, e in ((0, 1), (2, 5), (1, 3)):  # and bitwise the same in any batch
        assert torch.equal(whole[s:e], unlearned_log_probs(model, x[s:e], target[s:e])), (s, e)


def test_chunks_hold_a_fixed_amount_of_forward_work(bn_model, real_model, monkeypatch):
    """Chunk sizes follow the FLOPs of one image's forward, never the batch: cheap images share a
    chunk of 16, costly ones get small chunks, so padding a short batch never costs much."""
    from uni_lab.plugins import uni as uni_plugin

    x = torch.rand(3, 3, 16, 16)
    per_image = uni_plugin.forward_flops(bn_model, x)
    assert per_image > 0 and per_image == uni_plugin.forward_flops(bn_model, x[:1])
    monkeypatch.setitem(uni_plugin.UNLEARN_FLOPS, "cpu", 3 * per_image)
    monkeypatch.setitem(uni_plugin.MATCH_FLOPS, "cpu", 5 * per_image)
    assert unlearn_chunk_size(bn_model, x) == 2 and unlearn_chunk_size(bn_model, x[:1]) == 2
    assert uni_plugin.match_chunk_size(bn_model, x) == 4
    # an image costlier than the target still shares its chunk with one other (single-image
    # passes cost 12-32 % more per image on CPU); only the memory plan may ask for 1 (above)
    monkeypatch.setitem(uni_plugin.UNLEARN_FLOPS, "cpu", per_image // 3)
    monkeypatch.setitem(uni_plugin.MATCH_FLOPS, "cpu", per_image // 3)
    assert unlearn_chunk_size(bn_model, x) == 2 and uni_plugin.match_chunk_size(bn_model, x) == 2
    monkeypatch.undo()
    # Lite0: 64² images in chunks of 16; at 224² unlearning in 4s and matching in 8s (the default batch)
    sizes = {s: (unlearn_chunk_size(real_model, torch.rand(1, 3, s, s)),
                 uni_plugin.match_chunk_size(real_model, torch.rand(1, 3, s, s))) for s in (64, 224)}
    assert sizes == {64: (16, 16), 224: (4, 8)}


class PoolAttend(nn.Module):
    """What unlearning leaves to torch.func: layer norm, global average pooling and attention."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = self.conv(x)
        tokens = self.norm(h.flatten(2).transpose(1, 2))
        mixed, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        att = nn.functional.scaled_dot_product_attention(tokens, tokens, tokens)
        pooled = nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.head(torch.cat([mixed.mean(1) + att.mean(1), pooled], 1))


def test_vmap_unlearning_runs_without_per_image_fallbacks(recwarn):
    """Global pooling and fused attention have no torch.func batching rule (vmap loops over the
    images and warns "performance drop"); unlearning replaces them by exact equivalents."""
    torch.manual_seed(2)
    model = uni_lab.wrap(PoolAttend().eval(), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(16, 16), name="pa")
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        target = model(x).argmax(-1)
    m64 = _double(model)
    assert per_sample_grads(m64, x.double(), target) is None  # the vmap path
    batched = unlearned_log_probs(m64, x.double(), target)
    assert torch.allclose(batched, unlearned_log_probs_reference(m64, x.double(), target), rtol=0, atol=1e-10)
    unlearned_log_probs(model, x, target)
    drops = [str(w.message) for w in recwarn if "performance drop" in str(w.message)]
    assert not drops, drops

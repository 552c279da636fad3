"""Issue 25: unlearning at a few floor passes. Late pointwise convs keep their per-image
gradients factored, batch norm runs as its affine map, depthwise kernels run with each
image's own weights in one conv, and chunks are sized by one image's forward FLOPs (at least
two images where memory allows). Each stays exact (fp64 against the naive per-image form) and
batch-invariant (bitwise)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import uni_lab
from uni_lab.persample import Outer, dense, per_image_forward, per_sample_grads
from uni_lab.plugins.uni import unlearn_chunk_size, unlearned_log_probs, unlearned_log_probs_reference


class LateHead(nn.Module):
    """An EfficientNet-like tail at a small map: depthwise conv + BN, then pointwise convs on 2×2 and 1×1
    whose per-image gradients are cheaper kept as factors (with and without bias), a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.expand = nn.Conv2d(8, 24, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.project = nn.Conv2d(24, 16, 1, stride=2)
        self.head = nn.Linear(16, 5)
        with torch.no_grad():
            for bn in (self.bn, self.bn2):
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.1, 0.1)

    def forward(self, x):
        h = nn.functional.relu6(self.bn(self.stem(x)), inplace=True)
        h = nn.functional.relu6(self.bn2(self.expand(torch.relu(self.dw(h)))), inplace=True)
        return self.head(self.project(h).mean((2, 3)))


@pytest.fixture(scope="module")
def late():
    torch.manual_seed(7)
    model = uni_lab.wrap(LateHead(), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(8, 8), name="late")
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        target = model(x).argmax(-1)
    return model, x, target


def test_pointwise_convs_on_small_maps_stay_factored_and_exact(late):
    model, x, target = late
    m64, x64 = copy.deepcopy(model).double(), x.double()
    grads = per_sample_grads(m64, x64, target)
    factored = per_sample_grads(m64, x64, target, factored=True)
    # 2×2 positions of 8→24 and 1 of 24→16: L·(in + out) <= in·out, so both stay factors
    for name in ("net.expand.weight", "net.project.weight"):
        assert isinstance(factored[name], Outer), name
        assert factored[name].shape == grads[name].shape
    for k, g in grads.items():
        assert torch.allclose(dense(factored[k]), g, rtol=0, atol=1e-12), k
    reference = unlearned_log_probs_reference(m64, x64, target, eta=1.0)
    assert torch.allclose(per_image_forward(m64, x64, factored, 1.0).log_softmax(-1), reference, rtol=0, atol=1e-10)
    assert torch.allclose(per_image_forward(m64, x64, grads, 1.0).log_softmax(-1), reference, rtol=0, atol=1e-10)
    assert torch.allclose(unlearned_log_probs(m64, x64, target, eta=1.0), reference, rtol=0, atol=1e-10)


def test_unlearned_targets_are_bitwise_in_any_batch(late):
    model, x, target = late
    whole = unlearned_log_probs(model, x, target)
    for s, e in ((3, 4), (1, 5), (4, 6)):
        assert torch.equal(whole[s:e], unlearned_log_probs(model, x[s:e], target[s:e])), (s, e)


def test_chunks_are_sized_by_the_image_not_the_batch(real_model):
    # small images: one chunk of 16 (chunks of 4 cost Lite0 ~9 floor passes at 64²); large ones
    # stay at 4, where larger chunks gain nothing and a lone image pays for the padding; never
    # below 2 while the plan holds 2 (single images cost more per image)
    sizes = {s: unlearn_chunk_size(real_model, torch.rand(1, 3, s, s)) for s in (64, 224, 448)}
    assert sizes == {64: 16, 224: 4, 448: 2}
    assert unlearn_chunk_size(real_model, torch.rand(7, 3, 64, 64)) == 16

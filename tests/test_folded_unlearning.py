"""Issue 25: unlearning records and steps through the fast view's graph, where each batch norm is
folded into the convolution before it. The gradients of both modules' own parameters come back
from the folded filter's (exactly, no division by γ), and the per-image forward runs each pair
as one op. Every kind of convolution is checked against autograd and the naive per-image form in
fp64, with a zero scale, a batch norm without affine parameters, and a pair the view must not fold."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import uni_lab
from uni_lab import fastview
from uni_lab.persample import Outer, dense, per_image_forward, per_sample_grads
from uni_lab.plugins.uni import unlearned_log_probs, unlearned_log_probs_reference


class FoldedKinds(nn.Module):
    """A convolution of every kind the per-image forward has a folded formula for, each followed by
    its own batch norm: a dense 3×3 (no bias), a strided depthwise with a channel multiplier (bias,
    one zero γ), a pointwise on an 8×8 map (dense gradient; its batch norm without affine
    parameters), a strided pointwise, a grouped 3×3 whose filter is a buffer (nothing to step), a
    pointwise on a 2×2 map (factored gradient).
    ``side``'s output is also added back, so its batch norm must stay unfolded."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.dw, self.bn1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8), nn.BatchNorm2d(16)
        self.pw, self.bn2 = nn.Conv2d(16, 12, 1), nn.BatchNorm2d(12, affine=False)
        self.grouped, self.bn3 = nn.Conv2d(12, 12, 3, padding=1, groups=3, bias=False), nn.BatchNorm2d(12)
        self.side, self.bn4 = nn.Conv2d(12, 12, 1, bias=False), nn.BatchNorm2d(12)
        self.pw_s2, self.bn5 = nn.Conv2d(12, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False)
        self.late, self.bn6 = nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 5)
        with torch.no_grad():
            for bn in (self.bn0, self.bn1, self.bn2, self.bn3, self.bn4, self.bn5, self.bn6):
                bn.running_mean.uniform_(-0.3, 0.3)
                bn.running_var.uniform_(0.5, 2.0)
                if bn.affine:
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.uniform_(-0.2, 0.2)
            self.bn1.weight[3], self.bn1.bias[3] = 0.0, 0.3  # a constant channel: its γ still gets a gradient, its filter none
        frozen = self.grouped.weight.detach().clone()  # a fixed filter (a buffer): its batch norm still unlearns
        del self.grouped.weight
        self.grouped.register_buffer("weight", frozen)

    def forward(self, x):
        h = nn.functional.relu6(self.bn0(self.stem(x)), inplace=True)  # 16×16
        h = torch.relu(self.bn1(self.dw(h)))  # 8×8
        h = torch.relu(self.bn2(self.pw(h)))
        h = torch.relu(self.bn3(self.grouped(h)))
        s = self.side(h)
        h = h + self.bn4(s) + s  # the unnormalised output used twice: not folded
        h = torch.relu(self.bn5(self.pw_s2(h)))  # 4×4
        h = torch.relu(self.bn6(self.late(self.down(h))))  # 2×2
        return self.head(h.mean((2, 3)))


FOLDS = 6  # every pair but side → bn4


@pytest.fixture(scope="module")
def kinds():
    torch.manual_seed(3)
    model = uni_lab.wrap(FoldedKinds(), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(16, 16), name="kinds")
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        target = model(x).argmin(-1)  # the least likely class: large gradients everywhere
    return model, x, target


def _double(model):
    return copy.deepcopy(model).double()


def test_every_kind_of_pair_is_folded(kinds):
    model, x, _ = kinds
    view = fastview.fast_view(_double(model), x.double())
    assert view.folded == FOLDS
    assert ("net.side", "net.bn4") not in view.folds
    assert ("net.dw", "net.bn1") in view.folds


@pytest.mark.parametrize("view", ["on", "off"])
def test_folded_gradients_are_each_images_own(kinds, view):
    """Per image, every parameter's gradient (conv weights and biases, γ and β) is autograd's for that
    image alone, whether the recording ran folded or through the model as given."""
    model, x, target = kinds
    m64, x64 = _double(model), x.double()
    with fastview.using(view == "on"):
        grads = per_sample_grads(m64, x64, target)
        factored = per_sample_grads(m64, x64, target, factored=True)
    assert isinstance(factored["net.late.weight"], Outer)  # 4 positions: kept as factors
    assert not isinstance(factored["net.pw.weight"], Outer)
    for i in range(x.shape[0]):
        m64.zero_grad()
        nn.functional.cross_entropy(m64(x64[i:i + 1]), target[i:i + 1]).backward()
        for k, p in m64.named_parameters():
            assert torch.allclose(grads[k][i], p.grad, rtol=0, atol=1e-10), (k, i)
            assert torch.allclose(dense(factored[k])[i], p.grad, rtol=0, atol=1e-10), (k, i)
    assert float(grads["net.bn1.weight"][:, 3].abs().max()) > 1e-6  # the dead channel's γ moves
    assert float(grads["net.dw.weight"][:, 3].abs().max()) == 0.0  # its filter cannot


@pytest.mark.parametrize("view", ["on", "off"])
def test_folded_per_image_forward_equals_the_naive_form(kinds, view):
    model, x, target = kinds
    m64, x64 = _double(model), x.double()
    before = {k: v.clone() for k, v in m64.state_dict().items()}
    reference = unlearned_log_probs_reference(m64, x64, target, eta=1.0)
    with fastview.using(view == "on"):
        for factored in (False, True):
            grads = per_sample_grads(m64, x64, target, factored=factored)
            got = per_image_forward(m64, x64, grads, 1.0).log_softmax(-1)
            assert torch.allclose(got, reference, rtol=0, atol=1e-10), factored
        assert torch.allclose(unlearned_log_probs(m64, x64, target, eta=1.0), reference, rtol=0, atol=1e-10)
    assert (reference.gather(1, target[:, None]) < m64(x64).log_softmax(-1).gather(1, target[:, None])).all()
    for k, v in m64.state_dict().items():  # the user's model: not a bit changed
        assert torch.equal(v, before[k]), k


def test_folded_unlearning_is_bitwise_in_any_batch(kinds):
    model, x, target = kinds
    whole = unlearned_log_probs(model, x, target)
    for s, e in ((0, 1), (1, 4), (3, 5)):
        assert torch.equal(whole[s:e], unlearned_log_probs(model, x[s:e], target[s:e])), (s, e)


def test_the_embedded_model_unlearns_through_its_folded_graph(real_model):
    """EfficientNet-Lite0's 49 conv + batch-norm pairs are recorded folded, its gradients keep the
    model's own names (no folded filter leaks out), and with the view off it records as given."""
    from uni_lab.persample import _recording

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    net, rename, folds = _recording(real_model, x)
    assert len(folds) == 49 and net is not real_model
    own = dict(real_model.named_parameters())
    assert set(rename.values()) <= set(own)
    grads = per_sample_grads(real_model, x, torch.tensor([1, 2]), factored=True)
    assert set(grads) == set(own)
    assert all(dense(g).shape == (2, *own[k].shape) for k, g in grads.items())
    with fastview.using(False):
        net, _, folds = _recording(real_model, x)
    assert net is real_model and not folds


def test_unlearning_follows_changes_to_the_model(kinds):
    """The folds (σ, names) are built once per view; an in-place change of a scale or a running
    variance rebuilds the view, so unlearning never steps stale statistics."""
    model, x, target = kinds
    m64, x64 = _double(model), x.double()
    first = unlearned_log_probs(m64, x64, target)
    with torch.no_grad():
        m64.net.bn1.weight.mul_(1.5)
        m64.net.bn0.running_var.add_(0.3)
    after = unlearned_log_probs(m64, x64, target)
    assert not torch.allclose(after, first, rtol=0, atol=1e-6)
    assert torch.allclose(after, unlearned_log_probs_reference(m64, x64, target), rtol=0, atol=1e-10)

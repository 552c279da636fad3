"""UNI (docs/methods.md §2): the unlearned baseline on a tiny model and on the embedded real model."""
import pytest
import torch

import uni_lab
from uni_lab.data import SKIMAGE_PHOTOS, load_images
from uni_lab.seeding import image_seed


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _identical(model, snap):
    return all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.05)])
def test_uni_baseline_stays_in_the_ball_and_never_writes_weights(tiny_model, tiny_batch, norm, eps):
    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    snap = _snapshot(tiny_model)
    seeds = torch.arange(4)
    xb = uni_lab.create("baseline", "uni", eps=eps, norm=norm)(x, tiny_model, target, seeds=seeds)
    assert _identical(tiny_model, snap)
    delta = (xb - x).flatten(1)
    # ε is a per-pixel size in both norms: the L2 ball's radius is ε √d (an RMS of ε)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1) / delta.shape[1] ** 0.5
    assert torch.all(size <= eps + 1e-6)
    assert xb.min() >= 0 and xb.max() <= 1
    again = uni_lab.create("baseline", "uni", eps=eps, norm=norm)(x, tiny_model, target, seeds=seeds)
    assert torch.equal(xb, again), "seeded UNI must be deterministic on CPU"


def test_uni_baseline_of_an_image_does_not_depend_on_its_batch(tiny_model, tiny_batch):
    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    seeds = torch.arange(4)
    uni = uni_lab.create("baseline", "uni")
    whole = uni(x, tiny_model, target, seeds=seeds)
    alone = uni(x[2:3], tiny_model, target[2:3], seeds=seeds[2:3])
    torch.testing.assert_close(whole[2:3], alone, rtol=0, atol=1e-6)


@pytest.fixture
def two_threads():
    """UNI's matching amplifies float rounding (README): with one intra-op thread instead of two, the
    hubble_deep_field photograph's F_c(x')/F_c(x) is 0.148, not below 0.1 (measured). The criteria of
    docs/methods.md were measured at two threads, so this test pins them."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_uni_on_the_embedded_model_beats_black_ig(real_model, two_threads):
    """On every shipped photograph: x' in the ε-ball, weights bit-identical; F_c(x') ≤ 0.1·F_c(x) on all
    but at most one.
    Averaged over the photographs, UNI's path is more monotone and its completeness error
    smaller than black-baseline IG at the same B = 15 (the seed paper's stability claim)."""
    images = load_images(SKIMAGE_PHOTOS, real_model.input_size)
    x = torch.stack([i.pixels for i in images])
    seeds = torch.tensor([image_seed(0, i.id) for i in images])
    with torch.no_grad():
        target = real_model(x).argmax(-1)
    snap = _snapshot(real_model)
    uni = uni_lab.explain("uni", real_model, x, target, seeds=seeds, steps=15)
    assert _identical(real_model, snap), "UNI wrote the model's weights"
    black = uni_lab.explain("ig:black", real_model, x, target, steps=15)

    delta = (uni.baseline - x).flatten(1)
    assert torch.all(delta.norm(dim=1) <= 0.025 * delta.shape[1] ** 0.5 + 1e-4)  # the default L2 ball, RMS 0.025
    f_x, f_base = uni.trace["prob"][:, -1], uni.trace["prob"][:, 0]
    ratio = {i.id: float(b / f) for i, b, f in zip(images, f_base, f_x)}
    # Fragile by nature: PGD matching amplifies 1e-6 changes of the unlearned targets (another batch,
    # kernel or thread count) into other baselines, so which photograph misses the bar is a matter of
    # rounding: hubble_deep_field read 0.169, then 0.013 after the first unlearning of issue 25, and
    # 0.19 once unlearning ran through the folded graph (its unlearned targets twice as close to fp64);
    # the whole computation in fp64 reads astronaut 0.145, hubble_deep_field 0.006
    # (docs/uni_ablation.md). Each variant measured kept at least 7 of the 8 below 0.1.
    assert sum(r <= 0.1 for r in ratio.values()) >= len(ratio) - 1, ratio

    def monotone(e):
        p = e.trace["prob"]
        return (p[:, 1:] >= p[:, :-1]).float().mean()

    assert monotone(uni) > monotone(black), (monotone(uni), monotone(black))
    assert uni.completeness_error.mean() < black.completeness_error.mean(), (
        uni.completeness_error, black.completeness_error)

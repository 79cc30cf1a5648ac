"""Random affine views (forward, inverse, validity masks) and the BWCR two-view objective."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from calibrant.losses.bwcr import bwcr_consistency
from calibrant.registry import LOSSES
from calibrant.views import (
    TwoViewObjective,
    apply_view,
    invert_view,
    make_view,
    masked_cross_entropy,
    sample_views,
    two_view_objective,
)


def _smooth(b, h, w):
    rows = torch.arange(h, dtype=torch.float32)[:, None]
    cols = torch.arange(w, dtype=torch.float32)[None, :]
    imgs = [torch.sin(cols / (6 + i)) * torch.cos(rows / (9 + i)) + 0.1 * i for i in range(b)]
    return torch.stack(imgs)[:, None]


def _pixel_map(angle, zoom, shift, h, w):
    """Hand-derived pull map in (row, col) index space: source = R @ out + offset."""
    c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
    m = np.array([[c, -s], [s, c]])  # acts on (x=col, y=row) offsets from the centre
    r = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])  # same map on (row, col)
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    t = np.array([shift[1] * h, shift[0] * w])  # (row, col) shift in pixels
    return r, centre - r @ centre + t


CASES = [(0.3, 1.1, (0.05, -0.1)), (-0.5, 0.9, (0.0, 0.0)), (0.0, 1.0, (0.2, 0.1))]


@pytest.mark.parametrize(("angle", "zoom", "shift"), CASES)
def test_apply_and_invert_match_scipy_affine_transform(angle, zoom, shift):
    h, w = 12, 17  # non-square: a rotation must stay a rotation in pixels
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 1, h, w, generator=g, dtype=torch.float64).float()
    view = make_view(torch.tensor([angle]), torch.tensor([zoom]), torch.tensor([shift]), (h, w))
    r, offset = _pixel_map(angle, zoom, shift, h, w)
    ref = ndimage.affine_transform(
        img[0, 0].double().numpy(), r, offset, order=1, mode="grid-constant", cval=0.0
    )
    np.testing.assert_allclose(apply_view(img, view)[0, 0].numpy(), ref, atol=1e-5)
    r_inv = np.linalg.inv(r)
    ref_inv = ndimage.affine_transform(
        img[0, 0].double().numpy(), r_inv, -r_inv @ offset, order=1, mode="grid-constant"
    )
    back, _ = invert_view(img, view)
    np.testing.assert_allclose(back[0, 0].numpy(), ref_inv, atol=1e-5)


def test_hand_computed_point_moves_where_the_map_says():
    # a 90° rotation of a square image with zoom 1 moves pixel centres onto pixel centres
    h = w = 9
    img = torch.zeros(1, 1, h, w)
    img[0, 0, 1, 6] = 1.0  # row 1, col 6 -> offsets (x, y) = (2, -3)
    view = make_view(torch.tensor([math.pi / 2]), torch.ones(1), torch.zeros(1, 2), (h, w))
    out = apply_view(img, view)
    # out(p) = img(M p) with M = rot(90°): M (x, y) = (-y, x); (2, -3) = M (-3, -2)
    # so the bright pixel appears at offsets (-3, -2) -> col 1, row 2
    assert out[0, 0, 2, 1] == pytest.approx(1.0, abs=1e-5)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    back, valid = invert_view(out, view)
    assert back[0, 0, 1, 6] == pytest.approx(1.0, abs=1e-5)
    assert bool(valid.all())


def test_identity_view_is_exact_and_fully_valid():
    x = torch.randn(3, 2, 10, 7)
    view = make_view(torch.zeros(3), torch.ones(3), torch.zeros(3, 2), (10, 7))
    assert not view.geometric.any()
    assert torch.equal(apply_view(x, view), x)
    back, valid = invert_view(x, view)
    assert torch.equal(back, x)
    assert valid.all()


def test_forward_then_inverse_recovers_a_smooth_image_inside_the_mask():
    x = _smooth(4, 48, 40)
    g = torch.Generator().manual_seed(1)
    view = sample_views(4, (48, 40), p=1.0, generator=g)
    assert view.geometric.all()
    back, valid = invert_view(apply_view(x, view, intensity=False), view)
    assert 0.5 < valid.float().mean() < 1.0  # the rotations push some pixels out
    err = (back - x).abs()[:, 0][valid]
    assert float(err.max()) < 0.02
    assert float((back - x).abs()[:, 0][~valid].max()) > 0.02  # the mask removes the bad ones


def test_large_translation_invalidates_pixels():
    x = _smooth(1, 16, 16)
    view = make_view(torch.zeros(1), torch.ones(1), torch.tensor([[0.5, 0.0]]), (16, 16))
    back, valid = invert_view(apply_view(x, view), view)
    # the view shows columns 8.. of the image at 0..7: original columns 0..7 are lost
    assert not valid[0, :, :8].any()
    assert valid[0, :, 9:].all()
    torch.testing.assert_close(back[valid[:, None]], x[valid[:, None]])


def test_sample_views_is_seeded_and_applies_each_part_with_probability_p():
    a = sample_views(2000, (8, 8), generator=torch.Generator().manual_seed(3))
    b = sample_views(2000, (8, 8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.theta, b.theta) and torch.equal(a.gain, b.gain)
    for on in (a.angle != 0, a.zoom != 1, a.shift.ne(0).any(1), a.gain != 1):
        assert 0.45 < on.double().mean() < 0.55
    assert a.angle.abs().max() <= math.radians(15)
    assert ((a.zoom - 1).abs() <= 0.1).all()
    with pytest.raises(ValueError, match="scale"):
        sample_views(1, (4, 4), scale=1.5)


def test_masked_cross_entropy_against_a_loop():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 3, 5, generator=g)
    y = torch.randint(0, 4, (2, 3, 5), generator=g)
    y[0, 0, 0] = -100
    m = torch.rand(2, 3, 5, generator=g) > 0.3
    total, count = 0.0, 0
    for b in range(2):
        for i in range(3):
            for j in range(5):
                if y[b, i, j] == -100:
                    continue
                count += 1
                logp = torch.log_softmax(z[b, :, i, j].double(), 0)
                total += -float(logp[y[b, i, j]]) / 4 * float(m[b, i, j])
    got = masked_cross_entropy(z, y, m)
    assert float(got) == pytest.approx(total / count, rel=1e-6)
    full = masked_cross_entropy(z, y, class_reduction="sum")
    ref = torch.nn.functional.cross_entropy(z, y, ignore_index=-100)
    assert float(full) == pytest.approx(float(ref), rel=1e-6)


def test_two_view_objective_equals_the_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 16, 16, generator=g)
    y = (x[:, 0] > 0.3).long() + (x[:, 0] > 1.0).long()
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    obj = two_view_objective(LOSSES.get("bwcr").factory, l0=1.0, l1=2.0, l2=0.5, seed=5)
    terms = obj.train_step(net, x, y)
    loss = sum(terms.values())
    # independent recomputation from the same seed
    gen = torch.Generator().manual_seed(5)
    v1 = sample_views(3, (16, 16), generator=gen)
    v2 = sample_views(3, (16, 16), generator=gen)
    z1, m1 = invert_view(net(apply_view(x, v1)), v1)
    z2, m2 = invert_view(net(apply_view(x, v2)), v2)
    sup0 = masked_cross_entropy(net(x), y)
    sup1 = masked_cross_entropy(z1, y, m1)
    cons = bwcr_consistency(z1, z2, y, m1, m2)
    ref = (1.0 * sup0 + 2.0 * sup1 + 0.5 * cons) / 3.5
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert float(terms["cons"].detach()) > 0
    loss.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


def test_generator_state_is_in_the_state_dict():
    a = TwoViewObjective(LOSSES.build("bwcr"), seed=1)
    state = a.state_dict()
    first = sample_views(4, (8, 8), generator=a.generator).theta
    b = TwoViewObjective(LOSSES.build("bwcr"), seed=99)
    b.load_state_dict(state)
    assert torch.equal(sample_views(4, (8, 8), generator=b.generator).theta, first)


def test_two_view_needs_2d_images():
    obj = TwoViewObjective(LOSSES.build("bwcr"))
    with pytest.raises(ValueError, match="2D images"):
        obj.train_step(torch.nn.Identity(), torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 4, 4, 4))

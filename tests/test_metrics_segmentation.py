"""Dice / IoU / HD / HD95 / ASSD: brute-force reference, medpy and MONAI parity, edge cases, DDP."""

from __future__ import annotations

import itertools
import math
import warnings

# Peers are test dependencies: a missing one fails the run instead of skipping it.
import medpy.metric.binary as medpy_binary
import monai.metrics as monai_metrics
import monai.metrics.utils as monai_utils
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from calibrant.metrics._surface import class_surface_distances, label_surface
from calibrant.metrics.segmentation import (
    AverageSymmetricSurfaceDistance,
    DiceScore,
    HausdorffDistance95,
    OverlapDistance,
    average_symmetric_surface_distance,
    dice_score,
    hausdorff_distance,
    hausdorff_distance95,
    iou_score,
    segmentation_metrics,
)
from calibrant.registry import METRICS
from tests._ddp import run_ddp

# A NumPy RuntimeWarning (sqrt of a negative, 0/0) means a kernel read a value it should not.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


# ------------------------------------------------------------------------------------------
# Slow, obviously-correct reference
# ------------------------------------------------------------------------------------------
def ref_surface(mask: np.ndarray) -> np.ndarray:
    """Surface by visiting every voxel: in the mask and some face neighbour outside or off-image."""
    out = np.zeros_like(mask, dtype=bool)
    for idx in itertools.product(*[range(n) for n in mask.shape]):
        if not mask[idx]:
            continue
        for ax in range(mask.ndim):
            for step in (-1, 1):
                j = list(idx)
                j[ax] += step
                if not 0 <= j[ax] < mask.shape[ax] or not mask[tuple(j)]:
                    out[idx] = True
    return out


def ref_percentile(values: np.ndarray, q: float) -> float:
    s = sorted(float(v) for v in values)
    pos = q / 100 * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


def ref_case(pred: np.ndarray, gt: np.ndarray, spacing, q=95.0) -> dict[str, float]:
    """All metrics of one binary pair; distances from the full pairwise distance matrix."""
    inter, npred, ngt = int((pred & gt).sum()), int(pred.sum()), int(gt.sum())
    res = {
        "dice": 2 * inter / (npred + ngt) if npred + ngt else math.nan,
        "iou": inter / (npred + ngt - inter) if npred + ngt else math.nan,
    }
    if npred == 0 or ngt == 0:
        return res
    sp = np.argwhere(ref_surface(pred)) * np.asarray(spacing, float)
    sg = np.argwhere(ref_surface(gt)) * np.asarray(spacing, float)
    pair = np.sqrt(((sp[:, None, :] - sg[None, :, :]) ** 2).sum(-1))
    d_pg, d_gp = pair.min(1), pair.min(0)
    both = np.concatenate([d_pg, d_gp])
    res.update(
        hd=max(d_pg.max(), d_gp.max()),
        hd95_pooled=ref_percentile(both, q),
        hd95_directed_max=max(ref_percentile(d_pg, q), ref_percentile(d_gp, q)),
        assd_pooled=both.mean(),
        assd_mean_of_directed=(d_pg.mean() + d_gp.mean()) / 2,
    )
    return res


def blobs(shape, num_classes, seed, smooth=3):
    """Smooth random label map: argmax of box-blurred noise (compact, irregular regions)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, num_classes, *shape), generator=g)
    nd = len(shape)
    pool = [F.avg_pool1d, F.avg_pool2d, F.avg_pool3d][nd - 1]
    for _ in range(2):
        x = pool(x, smooth, stride=1, padding=smooth // 2, count_include_pad=False)
    return x[0].argmax(0)


def pair(shape, num_classes, seed):
    gt = blobs(shape, num_classes, seed)
    # prediction: the ground truth with a noisy-logit perturbation (partly overlapping regions)
    pred = blobs(shape, num_classes, seed + 1000)
    keep = blobs(shape, 2, seed + 2000).bool()
    return torch.where(keep, gt, pred), gt


SHAPES = [(9, 11), (7, 8, 6)]
SPACINGS = {2: [(1.0, 1.0), (0.7, 2.5)], 3: [(1.0, 1.0, 1.0), (2.5, 0.8, 1.3)]}


def _all_modes(pred, gt, C, spacing, **kw):
    out = {}
    for pm in ("pooled", "directed_max"):
        for am in ("pooled", "mean_of_directed"):
            r = segmentation_metrics(
                None,
                gt,
                pred_labels=pred,
                num_classes=C,
                include_background=True,
                spacing=spacing,
                percentile_mode=pm,
                assd_mode=am,
                **kw,
            )
            out.update(dice=r["dice"], iou=r["iou"], hd=r["hd"])
            out[f"hd95_{pm}"] = r["hd95"]
            out[f"assd_{am}"] = r["assd"]
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_bruteforce_reference(shape):
    C, B = 4, 2
    nd = len(shape)
    for spacing in SPACINGS[nd]:
        preds, gts = zip(*[pair(shape, C, 10 * s + nd) for s in range(B)], strict=True)
        pred, gt = torch.stack(preds), torch.stack(gts)
        got = _all_modes(pred, gt, C, spacing)
        for b, c in itertools.product(range(B), range(C)):
            ref = ref_case((pred[b] == c).numpy(), (gt[b] == c).numpy(), spacing)
            for name, value in ref.items():
                g = float(got[name][b, c])
                assert g == pytest.approx(value, rel=1e-9, abs=1e-9, nan_ok=True), (name, b, c)
            if "hd" not in ref:  # an empty side: distances are NaN under the default policy
                assert math.isnan(float(got["hd"][b, c]))


def test_surface_matches_erosion_definition():
    from scipy.ndimage import binary_erosion, generate_binary_structure

    for shape in [(13, 9), (6, 7, 5), (5,)]:
        lab = blobs(shape, 3, 7).numpy()
        surf = label_surface(lab)
        for c in range(3):
            m = lab == c
            er = binary_erosion(m, generate_binary_structure(m.ndim, 1))
            assert np.array_equal(surf & m, m & ~er)
            assert np.array_equal(surf & m, ref_surface(m))


def test_ball_search_and_kdtree_fallback_agree_with_bruteforce():
    # Far-apart objects force the k-d tree fallback; radius 0 uses it for every non-shared point,
    # a huge radius never does. All must equal the pairwise minimum.
    gt = torch.zeros(9, 30, 12, dtype=torch.long)
    pred = gt.clone()
    gt[2:5, 2:6, 3:8] = 1
    gt[5:8, 20:27, 2:9] = 2
    pred[3:6, 3:7, 3:9] = 1
    pred[1:4, 8:11, 2:5] = 2  # class 2 predicted ~10 voxels away
    spacing = (1.5, 0.6, 1.1)
    ref = {c: ref_case((pred == c).numpy(), (gt == c).numpy(), spacing) for c in (1, 2)}
    for radius in (0.0, 1.0, None, 40.0):
        got = class_surface_distances(pred.numpy(), gt.numpy(), [1, 2], spacing, radius=radius)
        for c in (1, 2):
            d_pg, d_gp = got[c]
            sp = np.argwhere(ref_surface((pred == c).numpy())) * np.asarray(spacing)
            sg = np.argwhere(ref_surface((gt == c).numpy())) * np.asarray(spacing)
            pair_d = np.sqrt(((sp[:, None] - sg[None]) ** 2).sum(-1))
            np.testing.assert_allclose(d_pg, pair_d.min(1), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(d_gp, pair_d.min(0), rtol=1e-12, atol=1e-12)
            assert max(d_pg.max(), d_gp.max()) == pytest.approx(ref[c]["hd"])


def _pairwise_directed(pred, gt, c, spacing):
    sp = np.argwhere(ref_surface(pred == c)) * np.asarray(spacing, float)
    sg = np.argwhere(ref_surface(gt == c)) * np.asarray(spacing, float)
    pair_d = np.sqrt(((sp[:, None] - sg[None]) ** 2).sum(-1))
    return pair_d.min(1), pair_d.min(0)


@pytest.mark.parametrize(
    "shape,spacing",
    [
        ((40,), (0.7,)),
        ((17, 23), (1.0, 1.0)),
        ((17, 23), (2.5, 0.7)),  # row axis 1 (the finest)
        ((9, 14, 12), (1.0, 1.0, 1.0)),
        ((9, 14, 12), (1.3, 2.5, 0.8)),  # row axis 2
    ],
)
def test_every_search_path_matches_bruteforce(shape, spacing):
    # radius 0: only the point's own row (everything else by the bounded k-d tree); small radii
    # mix the disk search and the tree; None: default; 1e3: disk only. Threads change nothing.
    pred, gt = (t.numpy() for t in pair(shape, 4, 7 * len(shape)))
    pred = pred.copy()
    pred[(slice(0, 2),) * len(shape)] = 3  # a small far-off false positive of class 3
    classes = [0, 1, 2, 3]
    ref = {c: _pairwise_directed(pred, gt, c, spacing) for c in classes}
    for radius, workers in itertools.product((0.0, 1.0, 2.5, None, 1e3), (1, 2)):
        got = class_surface_distances(pred, gt, classes, spacing, radius=radius, workers=workers)
        for c in classes:
            for g, r in zip(got[c], ref[c], strict=True):
                np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12, err_msg=f"{radius} {c}")


def test_kdtree_fallback_without_a_finite_bound():
    # Every row near the predicted object is empty of ground-truth surface (the objects lie on
    # different rows and far apart), so the tree must use the whole other surface.
    gt = np.zeros((30, 30), dtype=np.int64)
    pred = gt.copy()
    gt[2:5, 2:5] = 1
    pred[20:24, 22:27] = 1
    ref = _pairwise_directed(pred, gt, 1, (1.0, 1.0))
    for radius in (0.0, 3.0, 50.0):
        got = class_surface_distances(pred, gt, [1], (1.0, 1.0), radius=radius)[1]
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-12)


@pytest.mark.parametrize("n", [50, 33000])  # int16 row distances, and int32 for long rows
def test_row_distance_matches_bruteforce(n, generator):
    from calibrant.metrics._surface import _row_distance

    mask = np.zeros((n, 3), dtype=bool)
    hits = torch.randint(0, n, (6,), generator=generator).numpy()
    mask[hits, 0] = True
    mask[hits[:2], 2] = True
    d = _row_distance(mask)
    assert d.dtype == (np.int16 if n < 32000 else np.int32)
    pos = np.arange(n)
    for col in range(3):
        where = np.flatnonzero(mask[:, col])
        if where.size:
            ref = np.abs(pos[:, None] - where[None]).min(1)
            np.testing.assert_array_equal(d[:, col], ref)
        else:
            assert (d[:, col] >= n).all()  # "no point in this row"


# ------------------------------------------------------------------------------------------
# Peers
# ------------------------------------------------------------------------------------------
def _medpy(pred, gt, spacing):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(
            dice=medpy_binary.dc(pred, gt),
            iou=medpy_binary.jc(pred, gt),
            hd=medpy_binary.hd(pred, gt, voxelspacing=spacing),
            hd95_pooled=medpy_binary.hd95(pred, gt, voxelspacing=spacing),
            assd_pooled=medpy_binary.assd(pred, gt, voxelspacing=spacing),
            assd_mean_of_directed=(
                medpy_binary.asd(pred, gt, voxelspacing=spacing)
                + medpy_binary.asd(gt, pred, voxelspacing=spacing)
            )
            / 2,
        )


@pytest.mark.parametrize("shape", [(24, 30), (12, 20, 16)])
def test_parity_medpy(shape):
    C = 4
    nd = len(shape)
    for spacing in SPACINGS[nd]:
        pred, gt = pair(shape, C, 3 + nd)
        got = _all_modes(pred[None], gt[None], C, spacing)
        for c in range(C):
            p, g = (pred == c).numpy(), (gt == c).numpy()
            assert p.any() and g.any()
            for name, value in _medpy(p, g, spacing).items():
                assert float(got[name][0, c]) == pytest.approx(value, rel=1e-6, abs=1e-6), name


def _onehot(x, C):
    return F.one_hot(x.long(), C).movedim(-1, 1).float()


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("shape", [(24, 30), (12, 20, 16)])
def test_parity_monai(shape):
    C, B = 4, 2
    nd = len(shape)
    for spacing in SPACINGS[nd]:
        preds, gts = zip(*[pair(shape, C, 40 + s + nd) for s in range(B)], strict=True)
        pred, gt = torch.stack(preds), torch.stack(gts)
        P, G = _onehot(pred, C), _onehot(gt, C)
        ours = segmentation_metrics(
            None,
            gt,
            pred_labels=pred,
            num_classes=C,
            spacing=spacing,
            percentile_mode="directed_max",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd95 = monai_metrics.compute_hausdorff_distance(
                P, G, include_background=False, percentile=95, spacing=list(spacing)
            )
            hd = monai_metrics.compute_hausdorff_distance(
                P, G, include_background=False, spacing=list(spacing)
            )
            asd = monai_metrics.compute_average_surface_distance(
                P, G, include_background=False, symmetric=True, spacing=list(spacing)
            )
            dice = monai_metrics.DiceMetric(include_background=False, reduction="none")(P, G)
        for name, ref in dict(hd=hd, assd=asd, dice=dice).items():
            torch.testing.assert_close(ours[name][:, 1:], ref.double(), rtol=1e-6, atol=1e-6)
        # MONAI's torch.quantile runs in float32, so its interpolation weight carries ~1e-7 x
        # (number of surface points) of rounding: compare its own surface distances, quantiled in
        # float64, at 1e-6, and its float32 output at the size of that rounding.
        torch.testing.assert_close(ours["hd95"][:, 1:], hd95.double(), rtol=1e-4, atol=1e-4)
        for b, c in itertools.product(range(B), range(1, C)):
            _, (d1, d2), _ = monai_utils.get_edge_surface_distance(
                P[b, c], G[b, c], spacing=list(spacing), symmetric=True
            )
            ref95 = max(torch.quantile(d.double(), 0.95) for d in (d1, d2))
            assert float(ours["hd95"][b, c]) == pytest.approx(float(ref95), rel=1e-6, abs=1e-6)
        assert torch.isnan(ours["hd"][:, 0]).all()  # background excluded by default


def test_pooled_and_directed_max_differ_and_are_named():
    # A case where the two HD95 definitions disagree: they are different numbers, both reachable.
    pred, gt = pair((20, 24), 3, 5)
    a = hausdorff_distance95(None, gt[None], pred_labels=pred[None], num_classes=3)
    b = hausdorff_distance95(
        None, gt[None], pred_labels=pred[None], num_classes=3, percentile_mode="directed_max"
    )
    assert not torch.allclose(a[:, 1:], b[:, 1:])
    assert (b[:, 1:] >= a[:, 1:] - 1e-12).all()  # max of directed percentiles >= pooled one


# ------------------------------------------------------------------------------------------
# Edge cases and empty-mask policies
# ------------------------------------------------------------------------------------------
def _one(pred, gt, empty, spacing=None):
    return segmentation_metrics(
        None, gt[None], pred_labels=pred[None], num_classes=2, empty=empty, spacing=spacing
    )


def _vals(r):
    return {k: float(v[0, 1]) for k, v in r.items()}


def test_empty_policies():
    shape = (6, 8, 5)
    spacing = (1.0, 2.0, 0.5)
    diag = math.sqrt(6**2 + 16**2 + 2.5**2)
    z = torch.zeros(shape, dtype=torch.long)
    o = z.clone()
    o[1:3, 2:5, 1:4] = 1
    nan = math.nan
    cases = {  # (pred, gt): {policy: (dice, distance)}
        "gt_empty": ((o, z), {"nan": (nan, nan), "legacy": (1.0, 0.0), "diagonal": (0.0, diag)}),
        "pred_empty": ((z, o), {"nan": (0.0, nan), "legacy": (0.0, 0.0), "diagonal": (0.0, diag)}),
        "both_empty": ((z, z), {"nan": (nan, nan), "legacy": (1.0, 0.0), "diagonal": (nan, nan)}),
    }
    for _, ((p, g), expect) in cases.items():
        for policy, (dice, dist) in expect.items():
            v = _vals(_one(p, g, policy, spacing))
            assert v["dice"] == pytest.approx(dice, nan_ok=True)
            assert v["iou"] == pytest.approx(dice, nan_ok=True)
            for k in ("hd", "hd95", "assd"):
                assert v[k] == pytest.approx(dist, nan_ok=True), (policy, k)


def test_legacy_reproduces_papers_code():
    """The research code's per-volume loop (§7.2): medpy dc/hd95 with the two special cases."""

    def papers(pred, gt):
        if gt.sum() == 0:
            return 1.0, 0.0
        dsc = medpy_binary.dc(pred, gt)
        try:
            hd = medpy_binary.hd95(pred, gt)
        except RuntimeError:
            hd = 0.0
        return dsc, hd

    C = 4
    gt = blobs((10, 16, 16), C, 1)
    pred = blobs((10, 16, 16), C, 2)
    gt[gt == 3] = 0  # class 3 absent from the ground truth, present in the prediction
    pred[pred == 2] = 1  # class 2 missed by the prediction
    r = segmentation_metrics(None, gt[None], pred_labels=pred[None], num_classes=C, empty="legacy")
    for c in range(1, C):
        dsc, hd = papers((pred == c).numpy(), (gt == c).numpy())
        assert float(r["dice"][0, c]) == pytest.approx(dsc, abs=1e-12)
        assert float(r["hd95"][0, c]) == pytest.approx(hd, abs=1e-12)
    assert float(r["dice"][0, 3]) == 1.0 and float(r["hd95"][0, 2]) == 0.0


def test_single_voxel_and_border():
    # single voxels: distance is the plain Euclidean distance in spacing units
    gt = torch.zeros(5, 6, 7, dtype=torch.long)
    pred = gt.clone()
    gt[1, 2, 3] = 1
    pred[4, 0, 6] = 1
    v = _vals(_one(pred, gt, "nan", spacing=(2.0, 1.0, 0.5)))
    d = math.sqrt((3 * 2) ** 2 + 2**2 + (3 * 0.5) ** 2)
    assert v["hd"] == pytest.approx(d) and v["hd95"] == pytest.approx(d)
    assert v["assd"] == pytest.approx(d) and v["dice"] == 0.0
    # an object filling the whole image: its surface is the image border (outside = background)
    full = torch.ones(6, 7, dtype=torch.long)
    inner = torch.zeros(6, 7, dtype=torch.long)
    inner[1:5, 1:6] = 1
    ours = _vals(_one(full, inner, "nan"))
    ref = _medpy((full == 1).numpy(), (inner == 1).numpy(), None)
    for k in ("hd", "dice"):
        assert ours[k] == pytest.approx(ref[k])
    assert ours["hd95"] == pytest.approx(ref["hd95_pooled"])
    assert ours["assd"] == pytest.approx(ref["assd_pooled"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = monai_metrics.compute_hausdorff_distance(
            _onehot(full[None], 2), _onehot(inner[None], 2), percentile=95
        )
    hd95_m = segmentation_metrics(
        None, inner[None], pred_labels=full[None], num_classes=2, percentile_mode="directed_max"
    )["hd95"]
    assert float(hd95_m[0, 1]) == pytest.approx(float(m[0, 0]), rel=1e-6)  # MONAI drops bg


def test_ignore_index_removes_voxels_from_both_masks():
    C = 3
    pred, gt = pair((10, 12, 9), C, 21)
    ign = blobs((10, 12, 9), 4, 22) == 0
    tgt = gt.masked_fill(ign, -100)
    r = segmentation_metrics(None, tgt[None], pred_labels=pred[None], num_classes=C)
    for c in range(1, C):
        p = ((pred == c) & ~ign).numpy()
        g = ((gt == c) & ~ign).numpy()
        ref = ref_case(p, g, (1.0, 1.0, 1.0))
        assert float(r["dice"][0, c]) == pytest.approx(ref["dice"])
        assert float(r["hd95"][0, c]) == pytest.approx(ref["hd95_pooled"])
        assert float(r["assd"][0, c]) == pytest.approx(ref["assd_pooled"])


def test_logits_path_and_low_precision(generator):
    C = 3
    logits = torch.randn(2, C, 8, 9, 7, generator=generator)
    logits = F.avg_pool3d(logits, 3, stride=1, padding=1)
    gt = blobs((8, 9, 7), C, 4).expand(2, -1, -1, -1).clone()
    a = segmentation_metrics(logits, gt)
    b = segmentation_metrics(None, gt, pred_labels=logits.argmax(1), num_classes=C)
    for k in a:
        torch.testing.assert_close(a[k], b[k], equal_nan=True)
    lp = logits.bfloat16()
    c = segmentation_metrics(lp, gt)
    d = segmentation_metrics(None, gt, pred_labels=lp.float().argmax(1), num_classes=C)
    for k in c:
        torch.testing.assert_close(c[k], d[k], equal_nan=True)
    # functional twins agree with the bundle
    torch.testing.assert_close(dice_score(logits, gt), a["dice"], equal_nan=True)
    torch.testing.assert_close(iou_score(logits, gt), a["iou"], equal_nan=True)
    torch.testing.assert_close(hausdorff_distance(logits, gt), a["hd"], equal_nan=True)
    torch.testing.assert_close(hausdorff_distance95(logits, gt), a["hd95"], equal_nan=True)
    torch.testing.assert_close(
        average_symmetric_surface_distance(logits, gt), a["assd"], equal_nan=True
    )


def test_logits_that_require_grad_are_accepted(generator):
    """Issue 16 item 14: the metrics are not differentiable, so a tensor still attached to the
    graph (validation inside a training step) is read detached, not rejected."""
    C = 3
    logits = F.avg_pool3d(torch.randn(2, C, 8, 9, 7, generator=generator), 3, 1, 1)
    gt = blobs((8, 9, 7), C, 4).expand(2, -1, -1, -1).clone()
    expected = segmentation_metrics(logits, gt)
    live = logits.clone().requires_grad_(True)
    got = segmentation_metrics(live * 1.0, gt)  # a non-leaf, as a model output is
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], equal_nan=True)
    torch.testing.assert_close(dice_score(live, gt), expected["dice"], equal_nan=True)
    torch.testing.assert_close(hausdorff_distance95(live, gt), expected["hd95"], equal_nan=True)
    m = DiceScore(num_classes=C, average="none")
    m.update(live, gt)
    torch.testing.assert_close(m.compute(), expected["dice"].nanmean(0), equal_nan=True)
    assert live.grad is None


def test_per_case_spacing_table():
    C = 3
    (p0, g0), (p1, g1) = pair((9, 10, 8), C, 1), pair((9, 10, 8), C, 2)
    pred, gt = torch.stack([p0, p1]), torch.stack([g0, g1])
    table = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 4.0]])
    r = segmentation_metrics(None, gt, pred_labels=pred, num_classes=C, spacing=table)
    for b in range(2):
        rb = segmentation_metrics(
            None, gt[b : b + 1], pred_labels=pred[b : b + 1], num_classes=C, spacing=table[b]
        )
        for k in r:
            torch.testing.assert_close(r[k][b : b + 1], rb[k], equal_nan=True)


# ------------------------------------------------------------------------------------------
# Streaming, DDP, registry
# ------------------------------------------------------------------------------------------
def _batch(n, C=4, shape=(8, 10, 9), seed=0):
    pairs = [pair(shape, C, seed + i) for i in range(n)]
    pred = torch.stack([p for p, _ in pairs])
    gt = torch.stack([g for _, g in pairs])
    gt[0][gt[0] == 3] = 0  # an absent class -> NaN under the default policy
    return pred, gt


def _expected(pred, gt, C, average, **kw):
    r = segmentation_metrics(None, gt, pred_labels=pred, num_classes=C, **kw)
    out, counts = {}, {}
    for k, v in r.items():
        ok = ~torch.isnan(v)
        counts[k] = ok.sum(0)
        per_class = torch.nansum(v, 0) / counts[k].clamp_min(1)
        per_class[counts[k] == 0] = math.nan
        if average == "none":
            out[k] = per_class
        elif average == "mean":
            out[k] = v[ok].mean()
        else:
            out[k] = per_class[counts[k] > 0].mean()
    return out, counts


@pytest.mark.parametrize("average", ["mean", "class_mean", "none"])
def test_streaming_equals_one_shot(average, generator):
    C = 4
    pred, gt = _batch(7, C)
    m = OverlapDistance(C, average=average, return_counts=True, spacing=(1.0, 2.0, 0.5))
    cuts = sorted(torch.randperm(6, generator=generator)[:2].add(1).tolist())
    for lo, hi in zip([0, *cuts], [*cuts, 7], strict=True):
        m.update(None, gt[lo:hi], pred_labels=pred[lo:hi])
    values, counts = m.compute()
    exp, exp_counts = _expected(pred, gt, C, average, spacing=(1.0, 2.0, 0.5))
    for k in exp:
        torch.testing.assert_close(values[k], exp[k], equal_nan=True)
        assert torch.equal(counts[k], exp_counts[k])
    assert int(counts["dice"][0]) == 0 and int(counts["dice"][3]) == 6
    m.reset()
    assert int(m.counts.sum()) == 0


def test_single_metric_classes():
    C = 4
    pred, gt = _batch(3, C)
    exp, _ = _expected(pred, gt, C, "mean")
    for cls, key, kw in [
        (DiceScore, "dice", {}),
        (HausdorffDistance95, "hd95", {}),
        (AverageSymmetricSurfaceDistance, "assd", {}),
    ]:
        m = cls(num_classes=C, **kw)
        m.update(None, gt, pred_labels=pred)
        torch.testing.assert_close(m.compute(), exp[key])
    for name in ("dice", "iou", "hd", "hd95", "assd", "overlap_distance"):
        assert name in METRICS and METRICS.meta(name)["task"] == "segmentation"
    assert isinstance(METRICS.build("hd95", num_classes=3), HausdorffDistance95)


def _ddp_worker(rank, world_size, pred, gt):
    m = OverlapDistance(4, average="none", return_counts=True)
    m.update(None, gt[rank::world_size], pred_labels=pred[rank::world_size])
    return m.compute()


@pytest.mark.ddp
def test_ddp_equals_single_process():
    pred, gt = _batch(5, 4)
    results = run_ddp(_ddp_worker, world_size=2, args=(pred, gt))
    exp, exp_counts = _expected(pred, gt, 4, "none")
    for values, counts in results:
        for k in exp:
            torch.testing.assert_close(values[k], exp[k], equal_nan=True)
            assert torch.equal(counts[k], exp_counts[k])


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------
def test_bad_input_raises():
    gt = torch.zeros(1, 4, 4, dtype=torch.long)
    lg = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="exactly one"):
        segmentation_metrics(lg, gt, pred_labels=gt, num_classes=3)
    with pytest.raises(ValueError, match="exactly one"):
        segmentation_metrics(None, gt)
    with pytest.raises(ValueError, match="NaN"):
        segmentation_metrics(torch.full((1, 3, 4, 4), math.nan), gt)
    with pytest.raises(ValueError, match="target shape"):
        segmentation_metrics(lg, torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="target must be an integer"):
        segmentation_metrics(lg, gt.float())
    with pytest.raises(ValueError, match="target must be an integer"):
        segmentation_metrics(None, gt.bool(), pred_labels=gt, num_classes=3)
    with pytest.raises(ValueError, match="pred_labels must be an integer"):
        segmentation_metrics(None, gt, pred_labels=gt.to(torch.complex64), num_classes=3)
    with pytest.raises(ValueError, match="logits must be a floating-point"):
        segmentation_metrics(gt.unsqueeze(1), gt)
    with pytest.raises(ValueError, match="outside"):
        segmentation_metrics(lg, gt + 3)
    with pytest.raises(ValueError, match="num_classes"):
        segmentation_metrics(lg, gt, num_classes=4)
    with pytest.raises(ValueError, match="num_classes is required"):
        segmentation_metrics(None, gt, pred_labels=gt)
    with pytest.raises(ValueError, match="outside"):
        segmentation_metrics(None, gt, pred_labels=gt + 5, num_classes=3)
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(lg, gt, spacing=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(lg, gt, spacing=(1.0, -2.0))
    with pytest.raises(ValueError, match="empty"):
        segmentation_metrics(lg, gt, empty="zero")
    with pytest.raises(ValueError, match="percentile_mode"):
        segmentation_metrics(lg, gt, percentile_mode="max")
    with pytest.raises(ValueError, match="percentile"):
        segmentation_metrics(lg, gt, percentile=101)
    with pytest.raises(ValueError, match="metric"):
        segmentation_metrics(lg, gt, metrics=["hd99"])
    with pytest.raises(ValueError, match="spatial"):
        segmentation_metrics(torch.zeros(1, 3, 2, 2, 2, 2), torch.zeros(1, 2, 2, 2, 2).long())
    with pytest.raises(ValueError, match="average"):
        OverlapDistance(3, average="micro")


def test_argmax_and_confusion_fast_paths(generator):
    from calibrant.metrics._label_maps import _argmax, confusion_counts

    for C in (2, 5, 40):
        x = torch.randint(0, 3, (2, C, 6, 7), generator=generator).float()  # many ties
        for dt in (torch.float32, torch.bfloat16):
            assert torch.equal(_argmax(x.to(dt), torch.int16).long(), x.to(dt).argmax(1))
    for C in (3, 15, 16, 40):  # uint8 codes up to C = 15, int64 beyond
        t = torch.randint(-1, C, (9, 8, 7), generator=generator).to(torch.int8).numpy()
        p = torch.randint(-1, C, (9, 8, 7), generator=generator).to(torch.int8).numpy()
        ref = torch.zeros(C, C, dtype=torch.float64)
        for a, b in zip(t.reshape(-1), p.reshape(-1), strict=True):
            if a >= 0 and b >= 0:
                ref[a, b] += 1
        assert torch.equal(confusion_counts(p, t, C), ref)


@pytest.mark.parametrize("empty", ["nan", "legacy", "diagonal"])
def test_distance_only_path_matches_bundle(empty):
    # Without dice/iou, emptiness comes from the surfaces instead of the confusion counts.
    C = 4
    pred, gt = _batch(3, C)
    pred[1][pred[1] == 2] = 1  # class 2 missed in case 1
    full = segmentation_metrics(None, gt, pred_labels=pred, num_classes=C, empty=empty)
    for name in ("hd", "hd95", "assd"):
        alone = segmentation_metrics(
            None, gt, pred_labels=pred, num_classes=C, empty=empty, metrics=[name]
        )
        torch.testing.assert_close(alone[name], full[name], equal_nan=True)

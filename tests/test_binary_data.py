"""Binary "foreground vs rest" views of the segmentation loaders (``data.foreground``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from calibrant.cli import main
from calibrant.data.acdc import ACDCSlices, ACDCVolumes
from calibrant.data.base import DatasetInfo, binary_foreground, foreground_info
from calibrant.data.msd import MSDPatches
from calibrant.experiment import build_metrics
from calibrant.registry import DATASETS
from tests.conftest import require_dataset


def _reference(label: np.ndarray, foreground, ignore_index: int = -100) -> np.ndarray:
    """Element by element: ignore stays, a foreground class becomes 1, the rest 0."""
    out = np.zeros(label.shape, np.int64)
    for idx in np.ndindex(label.shape):
        v = int(label[idx])
        out[idx] = ignore_index if v == ignore_index else int(v in foreground)
    return out


# --------------------------------------------------------------------------------- the helper


@pytest.mark.parametrize("foreground", [[3], [1], [1, 2], [0, 2]])
def test_binary_foreground_matches_reference(generator, foreground):
    label = torch.randint(0, 4, (3, 5, 7), generator=generator)
    label[torch.rand(label.shape, generator=generator) < 0.1] = -100
    for dim in (0, 1, 3):
        out = binary_foreground(label, foreground, channel_dim=dim)
        assert out.dtype == torch.int64 and out.shape[dim] == 1
        ref = _reference(label.numpy(), foreground)
        np.testing.assert_array_equal(out.squeeze(dim).numpy(), ref)
    # another ignore value is kept too, and -100 then is an ordinary (non-foreground) value
    out = binary_foreground(label, foreground, ignore_index=2)
    ref = _reference(label.numpy(), foreground, ignore_index=2)
    np.testing.assert_array_equal(out[0].numpy(), ref)


def test_foreground_info_and_errors():
    info = DatasetInfo("acdc", 4, ("bg", "rv", "myo", "lv"), spatial_dims=2, task="segmentation")
    b = foreground_info(info, [3])
    assert (b.num_classes, b.class_names, b.task) == (1, ("lv",), "multilabel")
    assert (b.ignore_index, b.spatial_dims, b.in_channels) == (-100, 2, 1)
    assert foreground_info(info, [2, 1]).class_names == ("myo+rv",)
    with pytest.raises(ValueError, match="at least one class"):
        foreground_info(info, [])
    with pytest.raises(ValueError, match="out of range 0..3"):
        foreground_info(info, [4])
    with pytest.raises(ValueError, match="twice"):
        foreground_info(info, [1, 1])
    with pytest.raises(ValueError, match="every class"):
        foreground_info(info, [0, 1, 2, 3])


def test_pick_selects_one_entry_of_a_dict_metric():
    info = DatasetInfo("b", 1, ("fg",), task="multilabel")
    metrics = build_metrics(
        [
            {"name": "binary_scores", "as": "jaccard", "pick": "jaccard"},
            {"name": "binary_scores", "as": "nope", "pick": "iou"},
        ],
        info,
    )
    logits, target = torch.tensor([[2.0, -1.0, 0.5, -3.0]]), torch.tensor([[1, 1, 0, 0]])
    for m in metrics.values():
        m.reset()
        m.update(logits, target)
    assert float(metrics["jaccard"].compute()) == pytest.approx(1 / 3)  # TP 1, FP 1, FN 1
    with pytest.raises(KeyError, match="no entry 'iou'; entries: recall"):
        metrics["nope"].compute()


# ------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def acdc_root(data_root):
    require_dataset(data_root, "acdc", "ACDC_training_volumes")
    return data_root


def test_acdc_foreground_views_match_the_multiclass_labels(acdc_root):
    opts = {"size": (192, 192), "downsample": 4}
    multi = ACDCVolumes(acdc_root, "val", **opts)
    lv = ACDCVolumes(acdc_root, "val", foreground=[3], **opts)
    assert lv.info.num_classes == 1 and lv.info.class_names == ("left_ventricle",)
    assert lv.info.task == "multilabel" and multi.info.num_classes == 4
    for i in (0, len(multi) - 1):
        (xm, ym), (xb, yb) = multi[i], lv[i]
        assert torch.equal(xm, xb)
        assert yb.shape == (ym.shape[0], 1, *ym.shape[1:])  # (S, 1, H, W) like the logits
        np.testing.assert_array_equal(yb[:, 0].numpy(), _reference(ym.numpy(), [3]))
        assert 0 < int(yb.sum()) < yb.numel()
    slices = ACDCSlices(acdc_root, "val", foreground=[1], **opts)
    assert slices.info.class_names == ("right_ventricle",)
    x, y = slices[5]
    ref = _reference(multi.labels[0][5].long().numpy(), [1])
    assert x.shape == (1, 48, 48) and y.shape == (1, 48, 48)
    np.testing.assert_array_equal(y[0].numpy(), ref)


def test_acdc_foreground_keeps_ignore_pixels_of_a_transform(acdc_root):
    def mark(image, label):  # a transform that marks pixels as ignored (like a padding affine)
        label = label.clone()
        label[..., :3] = -100
        return image, label

    ds = ACDCVolumes(acdc_root, "val", downsample=4, foreground=[2], transform=mark)
    _, y = ds[0]
    assert bool((y[..., :3] == -100).all()) and set(y[..., 3:].unique().tolist()) <= {0, 1}


def test_hippocampus_whole_foreground(data_root):
    require_dataset(data_root, "msd_hippocampus", "imagesTr")
    multi = DATASETS.build("msd_hippocampus", root=data_root, split="val")
    whole = DATASETS.build("msd_hippocampus", root=data_root, split="val", foreground=[1, 2])
    assert whole.info.class_names == ("anterior+posterior",) and whole.info.num_classes == 1
    (_, ym), (_, yb) = multi[0], whole[0]
    assert yb.shape == (1, *ym.shape)
    np.testing.assert_array_equal(yb[0].numpy(), _reference(ym.numpy(), [1, 2]))
    patches = MSDPatches(whole, (16, 16, 16), generator=torch.Generator().manual_seed(0))
    x, y = patches[0]
    assert x.shape == (1, 16, 16, 16) and y.shape == (1, 16, 16, 16)
    assert set(y.unique().tolist()) <= {0, 1}


def test_binary_acdc_preset_trains_and_reports_binary_metrics(acdc_root, tmp_path):
    out = tmp_path / "lv"
    tiny = [
        "data.size=[96,96]",
        "data.downsample=4",
        "model.base_channels=4",
        "model.depth=2",
        "train.epochs=1",
        "train.batch_size=64",
        "eval.batch_size=64",
        "loss.name=all",
    ]
    args = ["train", "acdc_lv_dice", *tiny, "--out", str(out), "--data-root", str(acdc_root)]
    assert main([*args, "--device", "cpu", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    for key in ("recall", "specificity", "precision", "f_measure", "jaccard"):
        assert 0.0 <= test[f"binary/{key}"] <= 1.0, key
    assert 0.0 <= test["auroc"] <= 1.0
    # F-measure and Jaccard of one pooled confusion: F = 2J / (1 + J)
    j = test["binary/jaccard"]
    assert test["binary/f_measure"] == pytest.approx(2 * j / (1 + j))
    assert 0.0 <= metrics["history"][-1]["val"]["jaccard"] <= 1.0

"""ACDC, MSD and augmentation tests: real data in the shared folder, files written to tmp_path."""

from __future__ import annotations

import os
import shutil

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from calibrant.data import acdc as acdc_mod
from calibrant.data.acdc import (
    ACDCSlices,
    ACDCVolumes,
    center_crop_or_pad,
    read_patient_split,
)
from calibrant.data.cache import cache_key
from calibrant.data.msd import MSDPatches, MSDVolumes
from calibrant.data.transforms import (
    Compose,
    RandomAffine2d,
    RandomFlip,
    RandomIntensity,
    RandomRot90,
)
from calibrant.registry import DATASETS
from tests.conftest import require_dataset


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("calibrant-cache")


@pytest.fixture(scope="session")
def acdc_dir(data_root):
    return require_dataset(data_root, "acdc", "ACDC_training_volumes").parent


@pytest.fixture(scope="session")
def acdc_all(acdc_dir, cache):
    return ACDCVolumes(acdc_dir.parent, "all", cache_dir=cache)


# ---------------------------------------------------------------------------------------- ACDC


def test_acdc_split_file_and_sizes(acdc_dir, cache):
    split = read_patient_split(acdc_dir / "split_ssl4mis_patients.txt")
    assert {k: len(v) for k, v in split.items()} == {"train": 70, "val": 10, "test": 20}
    seen = {}
    for name, n_pat in (("train", 70), ("val", 10), ("test", 20)):
        vols = ACDCVolumes(acdc_dir, name, cache_dir=cache)
        assert len(vols.patients) == n_pat and len(vols) == 2 * n_pat
        assert vols.patients == sorted(split[name])
        seen[name] = set(vols.patients)
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"])
    assert not (seen["val"] & seen["test"])
    assert seen["train"] | seen["val"] | seen["test"] == set(range(1, 101))
    slices = sum(len(ACDCSlices(acdc_dir, s, cache_dir=cache)) for s in ("train", "val", "test"))
    assert slices == 1902


def test_acdc_shapes_dtypes_labels_and_shares(acdc_all):
    x, y = acdc_all[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape[1:] == (1, 192, 192) and y.shape == (x.shape[0], 192, 192)
    counts = torch.zeros(4, dtype=torch.int64)
    for lab in acdc_all.labels:
        counts += torch.bincount(lab.flatten().long(), minlength=4)
    assert counts.numel() == 4 and bool((counts > 0).all())
    share = counts.double() / counts.sum()
    # README (uncropped): about 96.2 / 1.2 / 1.3 / 1.3 %; the crop removes background only.
    assert 0.90 < share[0] < 0.97
    for c in (1, 2, 3):
        assert 0.008 < share[c] < 0.025
    assert all(0.0 <= float(im.min()) and float(im.max()) <= 1.0 for im in acdc_all.images[:20])
    assert acdc_all.info.num_classes == 4 and acdc_all.info.spatial_dims == 2


def test_acdc_center_crop_matches_slicing_reference(acdc_dir, acdc_all):
    # independent reference: crop/pad by explicit index arithmetic on the raw h5 arrays
    idx = acdc_all.case_ids.index("patient001_frame01")
    with h5py.File(acdc_dir / "ACDC_training_volumes" / "patient001_frame01.h5") as f:
        image, label = f["image"][:], f["label"][:]
    assert image.shape[1:] == (256, 216)
    ref = np.zeros((image.shape[0], 192, 192), np.float32)
    ref[:, :, :] = image[:, 32:224, 12:204]
    np.testing.assert_array_equal(acdc_all.images[idx].numpy(), ref)
    np.testing.assert_array_equal(acdc_all.labels[idx].numpy(), label[:, 32:224, 12:204])
    # padding on a small array, with an explicit loop reference
    small = np.arange(3 * 5).reshape(3, 5)
    out = center_crop_or_pad(small, (6, 2))
    exp = np.zeros((6, 2), small.dtype)
    for i in range(3):
        for j in range(2):
            exp[1 + i, j] = small[i, 1 + j]
    np.testing.assert_array_equal(out, exp)


@pytest.fixture(scope="session")
def acdc_small(acdc_dir, tmp_path_factory):
    """A copy of patient001's two volumes (the layout of the real folder, two files only)."""
    root = tmp_path_factory.mktemp("acdc-small")
    dest = root / "ACDC_training_volumes"
    dest.mkdir()
    for name in ("patient001_frame01.h5", "patient001_frame12.h5"):
        shutil.copy(acdc_dir / "ACDC_training_volumes" / name, dest / name)
    return root


def test_acdc_marginloss_crop_and_downsample(acdc_dir, acdc_small, cache):
    ml = ACDCVolumes(acdc_small, "all", crop="marginloss", cache_dir=cache)
    with h5py.File(acdc_dir / "ACDC_training_volumes" / "patient001_frame01.h5") as f:
        image = f["image"][:]
    i = ml.case_ids.index("patient001_frame01")
    np.testing.assert_array_equal(ml.images[i].numpy(), image[:, 16:208, 16:208])
    ds = ACDCVolumes(acdc_small, "all", downsample=2, cache_dir=cache)
    full = ACDCVolumes(acdc_small, "all", cache_dir=cache)
    assert ds.images[i].shape[1:] == (96, 96)
    ref = F.avg_pool2d(full.images[i][:, None], 2)[:, 0]
    torch.testing.assert_close(ds.images[i], ref)
    assert torch.equal(ds.labels[i], full.labels[i][:, 1::2, 1::2])
    assert ds.spacings[i] == (1.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="divisible"):
        ACDCVolumes(acdc_small, "all", downsample=5, use_cache=False)


def _write_official_layout(acdc_dir, dest, patients, zooms=(1.5, 1.5, 10.0)):
    """Write patientNNN/patientNNN_frameFF[_gt].nii.gz + Info.cfg from the h5 volumes."""
    for p in patients:
        pdir = dest / f"patient{p:03d}"
        pdir.mkdir(parents=True)
        frames = []
        for h5 in sorted((acdc_dir / "ACDC_training_volumes").glob(f"patient{p:03d}_frame*.h5")):
            frame = h5.stem.split("_")[1]
            frames.append(int(frame[5:]))
            with h5py.File(h5) as f:
                image, label = f["image"][:], f["label"][:]
            affine = np.diag([*zooms, 1.0])
            # h5 (S, H, W) = sitk (Z, Y, X) -> nibabel (X, Y, Z); intensities rescaled to 0..1000
            img = nib.Nifti1Image((image * 1000.0).transpose(2, 1, 0).astype(np.float32), affine)
            gt = nib.Nifti1Image(label.transpose(2, 1, 0).astype(np.uint8), affine)
            nib.save(img, pdir / f"patient{p:03d}_{frame}.nii.gz")
            nib.save(gt, pdir / f"patient{p:03d}_{frame}_gt.nii.gz")
        (pdir / "Info.cfg").write_text(f"ED: {frames[0]}\nES: {frames[1]}\nGroup: NOR\n")
        # the 4D cine file of the release is present but has no ground truth: must be ignored
        (pdir / f"patient{p:03d}_4d.nii.gz").write_bytes(b"")


def test_acdc_nifti_layout_matches_h5(acdc_dir, tmp_path, cache):
    _write_official_layout(acdc_dir, tmp_path / "release", [1, 2])
    nii = ACDCVolumes(tmp_path / "release", "all", layout="nifti", use_cache=False)
    h5 = ACDCVolumes(acdc_dir, "all", cache_dir=cache)
    assert nii.layout == "nifti" and nii.case_ids == [
        "patient001_frame01",
        "patient001_frame12",
        "patient002_frame01",
        "patient002_frame12",
    ]
    for i, cid in enumerate(nii.case_ids):
        j = h5.case_ids.index(cid)
        torch.testing.assert_close(nii.images[i], h5.images[j], atol=1e-6, rtol=0)
        assert torch.equal(nii.labels[i], h5.labels[j])
        assert nii.spacings[i] == pytest.approx((10.0, 1.5, 1.5))
    # the patient split file applies to the release layout when passed explicitly
    test = ACDCVolumes(
        tmp_path / "release",
        "test",
        split_file=acdc_dir / "split_ssl4mis_patients.txt",
        use_cache=False,
    )
    assert test.patients == [1]


def test_acdc_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="patientNNN_frameFF.h5"):
        ACDCVolumes(tmp_path, "all", use_cache=False)
    vol_dir = tmp_path / "ACDC_training_volumes"
    vol_dir.mkdir()
    bad = vol_dir / "patient001_frame01.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(OSError, match="patient001_frame01.h5"):
        ACDCVolumes(tmp_path, "all", use_cache=False)
    with pytest.raises(FileNotFoundError, match="split file"):
        ACDCVolumes(tmp_path, "all", split_file=tmp_path / "nope.txt", use_cache=False)


def test_acdc_cache_reused_and_invalidated(acdc_dir, tmp_path, monkeypatch):
    src = tmp_path / "acdc" / "ACDC_training_volumes"
    src.mkdir(parents=True)
    for name in ("patient001_frame01.h5", "patient001_frame12.h5"):
        shutil.copy(acdc_dir / "ACDC_training_volumes" / name, src / name)
    cache = tmp_path / "cache"
    first = ACDCVolumes(tmp_path, "all", cache_dir=cache)
    assert len(list(cache.glob("acdc-*.pkl"))) == 1

    def boom(path):
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(acdc_mod, "_read_h5", boom)
    again = ACDCVolumes(tmp_path, "all", cache_dir=cache)
    assert torch.equal(again.images[1], first.images[1])
    # a source change (new mtime) invalidates the entry and decodes again
    st = os.stat(src / "patient001_frame01.h5")
    os.utime(src / "patient001_frame01.h5", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        ACDCVolumes(tmp_path, "all", cache_dir=cache)
    # options are part of the key
    assert cache_key("a", [], {"size": [192, 192]}) != cache_key("a", [], {"size": [160, 160]})
    # a cache folder inside the data root is refused
    with pytest.raises(ValueError, match="inside the data root"):
        ACDCVolumes(tmp_path, "all", cache_dir=tmp_path / "acdc" / "c")


def test_acdc_registry_views(acdc_dir, cache):
    tr = DATASETS.build("acdc", root=acdc_dir.parent, split="val", view="slices", cache_dir=cache)
    ev = DATASETS.build("acdc", root=acdc_dir.parent, split="val", cache_dir=cache)
    assert isinstance(tr, ACDCSlices) and isinstance(ev, ACDCVolumes)
    x, y = tr[0]
    assert x.shape == (1, 192, 192) and y.shape == (192, 192)
    assert len(tr) == sum(im.shape[0] for im in ev.images)


# ----------------------------------------------------------------------------------------- MSD


@pytest.fixture(scope="session")
def hippo_dir(data_root):
    return require_dataset(data_root, "msd_hippocampus", "imagesTr").parent


def test_msd_split_sizes_disjoint_and_seeded(hippo_dir, cache):
    parts = {s: MSDVolumes(hippo_dir, s, cache_dir=cache) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [182, 26, 52]
    ids = [set(p.case_ids) for p in parts.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert len(ids[0] | ids[1] | ids[2]) == 260
    again = MSDVolumes(hippo_dir, "test", cache_dir=cache)
    assert again.case_ids == parts["test"].case_ids
    other = MSDVolumes(hippo_dir, "test", seed=1, cache_dir=cache)
    assert other.case_ids != parts["test"].case_ids


def test_msd_volumes_content(hippo_dir, cache):
    vols = DATASETS.build("msd_hippocampus", root=hippo_dir.parent, split="all", cache_dir=cache)
    assert vols.info.class_names == ("background", "anterior", "posterior")
    assert vols.info.num_classes == 3 and vols.info.spatial_dims == 3
    assert vols.info.spacing == (1.0, 1.0, 1.0)
    counts = torch.zeros(3, dtype=torch.int64)
    for lab in vols.labels:
        assert 31 <= lab.shape[0] <= 43 and 40 <= lab.shape[1] <= 59 and 24 <= lab.shape[2] <= 47
        counts += torch.bincount(lab.flatten().long(), minlength=3)
    assert counts.numel() == 3
    share = counts.double() / counts.sum()
    assert share.tolist() == pytest.approx([0.948, 0.027, 0.025], abs=0.01)
    x, y = vols[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == y.shape
    # z-score per volume against a direct nibabel read
    raw = nib.load(hippo_dir / "imagesTr" / f"{vols.case_ids[0]}.nii.gz").get_fdata()
    ref = (raw - raw.mean()) / raw.std()
    np.testing.assert_allclose(x[0].numpy(), ref, atol=1e-4)


def test_msd_pad_and_patches(hippo_dir, cache):
    padded = MSDVolumes(hippo_dir, "val", pad_to=(48, 64, 48), cache_dir=cache)
    plain = MSDVolumes(hippo_dir, "val", cache_dir=cache)
    assert all(tuple(im.shape[1:]) == (48, 64, 48) for im in padded.images)
    assert int((padded.labels[0] > 0).sum()) == int((plain.labels[0] > 0).sum())

    def draw(seed):
        p = MSDPatches(plain, (24, 24, 24), 3, generator=torch.Generator().manual_seed(seed))
        return [p[i] for i in range(len(p))]

    a, b, c = draw(0), draw(0), draw(1)
    assert len(a) == 3 * len(plain)
    assert all(torch.equal(u[0], v[0]) for u, v in zip(a, b, strict=True))
    assert any(not torch.equal(u[0], v[0]) for u, v in zip(a, c, strict=True))
    # each patch is a sub-block of its volume: find it by brute force on the first one
    patch, lab = a[0]
    vol = plain.images[0][0]
    found = False
    for i in range(vol.shape[0] - 23):
        for j in range(vol.shape[1] - 23):
            for k in range(vol.shape[2] - 23):
                if vol[i, j, k] == patch[0, 0, 0, 0] and torch.equal(
                    vol[i : i + 24, j : j + 24, k : k + 24], patch[0]
                ):
                    found = torch.equal(plain.labels[0][i : i + 24, j : j + 24, k : k + 24], lab)
    assert found
    big = MSDPatches(plain, (64, 64, 64), 1, generator=torch.Generator().manual_seed(0))
    assert big[0][0].shape == (1, 64, 64, 64)


def test_msd_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="imagesTr"):
        MSDVolumes(tmp_path, "all", use_cache=False)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    nib.save(img, tmp_path / "imagesTr" / "case_001.nii.gz")
    with pytest.raises(FileNotFoundError, match="case_001"):
        MSDVolumes(tmp_path, "all", use_cache=False)
    (tmp_path / "labelsTr" / "case_001.nii.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    with pytest.raises(OSError, match="case_001.nii.gz"):
        MSDVolumes(tmp_path, "all", use_cache=False)


# ---------------------------------------------------------------------------------- transforms


def test_transforms_joint_and_seeded():
    base = torch.arange(36).view(6, 6)
    img = base[None].float()

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        aug = Compose([RandomFlip(generator=g), RandomRot90(generator=g)])
        return [aug(img, base) for _ in range(8)]

    a, b = run(3), run(3)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa[0].long(), ya)  # label moved exactly like the image
    # all 8 dihedral images are reachable and nothing else is produced
    dihedral = {
        tuple(torch.rot90(m, k).flatten().tolist()) for m in (base, base.T) for k in range(4)
    }
    outs = {tuple(y.flatten().tolist()) for _, y in run(0) + run(1) + run(2) + run(4)}
    assert outs <= dihedral and len(outs) >= 4


def test_transforms_3d_flip_rot_and_intensity():
    g = torch.Generator().manual_seed(0)
    vol = torch.arange(2 * 3 * 4 * 4).view(2, 3, 4, 4).float()
    lab = vol[0].long()
    x, y = RandomFlip(p=1.0, generator=g)(vol, lab)
    assert torch.equal(x, vol.flip([1, 2, 3])) and torch.equal(y, lab.flip([0, 1, 2]))
    x, y = RandomRot90(planes=[(1, 2)], generator=g)(vol, lab)
    assert torch.equal(x[0].long(), y) and x.shape == vol.shape
    gi = torch.Generator().manual_seed(5)
    x, y = RandomIntensity(0.2, 0.1, generator=gi)(vol, lab)
    gi = torch.Generator().manual_seed(5)
    s = 1 + 0.2 * (2 * float(torch.rand((), generator=gi)) - 1)
    t = 0.1 * (2 * float(torch.rand((), generator=gi)) - 1)
    torch.testing.assert_close(x, vol * s + t)
    assert y is lab


def test_affine_rotation_90_matches_rot90():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 8, 8, generator=g)
    lab = torch.randint(0, 4, (8, 8), generator=g)
    aff = RandomAffine2d(degrees=0, scale=0, translate=0, generator=g)
    x, y = aff(img, lab)
    torch.testing.assert_close(x, img, atol=1e-5, rtol=0)
    assert torch.equal(y, lab)
    aff = RandomAffine2d(degrees=30, scale=0.1, translate=0.1, label_fill=0, generator=g)
    x, y = aff(img, lab)
    assert x.shape == img.shape and y.dtype == lab.dtype
    assert set(y.unique().tolist()) <= set(lab.unique().tolist()) | {0}
    with pytest.raises(ValueError, match="p must"):
        RandomFlip(p=2.0)

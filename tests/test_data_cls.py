"""MULAN, 20 Newsgroups, CIFAR-10, Fashion-MNIST and long-tail/validation split tests."""

from __future__ import annotations

import gzip
import pickle
import re
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.io import arff as scipy_arff

from calibrant.data import fashion_mnist as fashion_mnist_module
from calibrant.data.cifar import load_cifar10, read_cifar_jpegs
from calibrant.data.fashion_mnist import SYSTEM_DIR, read_idx
from calibrant.data.longtail import (
    long_tailed_counts,
    long_tailed_indices,
    select_split,
    stratified_split,
)
from calibrant.data.mulan import read_arff, read_label_xml
from calibrant.data.newsgroups import clean_post, strip_footers, strip_headers, strip_quotes
from calibrant.registry import DATASETS
from tests.conftest import require_dataset


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("calibrant-cache-cls")


# --------------------------------------------------------------------------------------- MULAN

MULAN_COUNTS = {  # README: train/test examples, features, labels
    "scene": (1211, 1196, 294, 6),
    "yeast": (1500, 917, 103, 14),
    "emotions": (391, 202, 72, 6),
    "medical": (333, 645, 1449, 45),
    "enron": (1123, 579, 1001, 53),
}


@pytest.mark.parametrize("name", sorted(MULAN_COUNTS))
def test_mulan_counts_and_standardisation(data_root, cache, name):
    require_dataset(data_root, "mulan", name)
    tr = DATASETS.build(f"mulan_{name}", root=data_root, split="trainval", cache_dir=cache)
    te = DATASETS.build(f"mulan_{name}", root=data_root, split="test", cache_dir=cache)
    n_tr, n_te, n_feat, n_lab = MULAN_COUNTS[name]
    assert (len(tr), len(te)) == (n_tr, n_te)
    assert tr.inputs.shape == (n_tr, n_feat) and tr.targets.shape == (n_tr, n_lab)
    assert tr.info.task == "multilabel" and tr.info.num_classes == n_lab
    assert tr.info.class_names == tuple(read_label_xml(data_root / "mulan" / name / f"{name}.xml"))
    assert set(torch.unique(tr.targets).tolist()) == {0.0, 1.0}
    x = tr.inputs.double()
    assert x.mean(0).abs().max() < 1e-4
    std = x.std(0, unbiased=False)
    assert bool(((std - 1).abs() < 1e-3).logical_or(std < 1e-6).all())
    assert tr[0][0].dtype == torch.float32


def test_mulan_against_scipy_and_label_order(data_root, cache):
    folder = require_dataset(data_root, "mulan", "emotions")
    meta_x, _ = scipy_arff.loadarff(folder / "emotions-train.arff")
    names, dense = read_arff(folder / "emotions-train.arff")
    assert names == list(meta_x.dtype.names)
    ref = np.array([[float(v) for v in row] for row in meta_x.tolist()], np.float32)
    np.testing.assert_allclose(dense, ref, rtol=1e-6)
    raw = DATASETS.build(
        "mulan_emotions", root=data_root, split="trainval", standardize=False, cache_dir=cache
    )
    labels = read_label_xml(folder / "emotions.xml")
    np.testing.assert_array_equal(raw.targets.numpy(), ref[:, [names.index(n) for n in labels]])
    # enron declares its labels in a different order than its XML: columns follow the XML
    enron = require_dataset(data_root, "mulan", "enron")
    attrs, data = read_arff(enron / "enron-train.arff")
    ds = DATASETS.build("mulan_enron", root=data_root, split="trainval", cache_dir=cache)
    for k in (0, 10, 52):
        col = attrs.index(ds.info.class_names[k])
        np.testing.assert_array_equal(ds.targets[:, k].numpy(), data[:, col])


def test_mulan_validation_split_is_a_seeded_disjoint_part_of_train(data_root, cache):
    require_dataset(data_root, "mulan", "scene")
    opts = {"root": data_root, "standardize": False, "cache_dir": cache}
    full = DATASETS.build("mulan_scene", split="trainval", **opts)
    tr = DATASETS.build("mulan_scene", split="train", **opts)
    va = DATASETS.build("mulan_scene", split="val", **opts)
    assert len(tr) + len(va) == len(full) and len(va) == round(0.1 * len(full))
    rows = {tuple(r.tolist()) for r in full.inputs}
    tr_rows = {tuple(r.tolist()) for r in tr.inputs}
    va_rows = {tuple(r.tolist()) for r in va.inputs}
    assert tr_rows | va_rows == rows and not tr_rows & va_rows
    again = DATASETS.build("mulan_scene", split="val", **opts)
    other = DATASETS.build("mulan_scene", split="val", seed=1, **opts)
    assert torch.equal(again.inputs, va.inputs) and not torch.equal(other.inputs, va.inputs)
    z = DATASETS.build("mulan_scene", split="train", root=data_root, cache_dir=cache)
    assert z.inputs.double().mean(0).abs().max() < 1e-4  # standardised on the train rows


def test_arff_parser_dense_sparse_nominal_and_errors(tmp_path):
    p = tmp_path / "toy.arff"
    p.write_text(
        "% comment\n@relation 'toy set'\n@attribute 'feat one' numeric\n@attribute f2 REAL\n"
        "@attribute colour {red,green,blue}\n@attribute lab {0,1}\n@data\n"
        "1.5,-2,blue,1\n{1 3.25,2 green}\n{}\n?,0,red,0\n"
    )
    names, x = read_arff(p)
    assert names == ["feat one", "f2", "colour", "lab"]
    ref = np.array([[1.5, -2, 2, 1], [0, 3.25, 1, 0], [0, 0, 0, 0], [np.nan, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(x, ref)
    bad = tmp_path / "bad.arff"
    bad.write_text("@relation r\n@attribute a numeric\n@attribute b numeric\n@data\n1,2\n1,2,3\n")
    with pytest.raises(ValueError, match=r"bad\.arff:6"):
        read_arff(bad)
    bad.write_text("@relation r\n@attribute a {0,1}\n@data\n{0 7}\n")
    with pytest.raises(ValueError, match=r"bad\.arff:4.*not declared"):
        read_arff(bad)
    bad.write_text("@relation r\n@attribute a numeric\n")
    with pytest.raises(ValueError, match=r"bad\.arff.*no @data"):
        read_arff(bad)
    with pytest.raises(FileNotFoundError, match="nope-train.arff"):
        DATASETS.build("mulan", root=tmp_path, name="nope")


# ------------------------------------------------------------------------------- 20 Newsgroups


@pytest.fixture(scope="session")
def news(data_root, cache):
    require_dataset(data_root, "20newsgroups", "20news-bydate.tar.gz")
    opts = {"root": data_root, "cache_dir": cache, "strip": ("headers", "footers", "quotes")}
    return (
        DATASETS.build("20newsgroups", split="trainval", **opts),
        DATASETS.build("20newsgroups", split="test", **opts),
    )


def test_newsgroups_counts_classes_and_features(data_root, news):
    tr, te = news
    assert (len(tr), len(te)) == (11314, 7532)
    assert tr.info.num_classes == 20 and tr.info.class_names[0] == "alt.atheism"
    # class counts against an independent count of the tarball's member names
    pat = re.compile(r"20news-bydate-train/([^/]+)/\d+$")
    with tarfile.open(data_root / "20newsgroups" / "20news-bydate.tar.gz") as tf:
        counts = Counter(m.group(1) for n in tf.getnames() if (m := pat.search(n)))
    assert torch.bincount(tr.targets).tolist() == [counts[g] for g in tr.info.class_names]
    x, y = tr[0]
    assert x.shape == (10000,) and x.dtype == torch.float32 and y.dtype == torch.int64
    norms = np.sqrt(np.asarray(tr.x[:200].multiply(tr.x[:200]).sum(1))).ravel()
    assert np.all((np.abs(norms - 1) < 1e-4) | (norms == 0))


def test_newsgroups_stripping():
    post = (
        "From: a@b.c\nSubject: Re: x\nLines: 5\n\n"
        "In article <123@foo.bar>, someone@x.y writes:\n> quoted text\n>> deeper\n"
        "| also quoted\nMy answer.\nSecond line.\n\n-- \nJohn Doe\njohn@doe.org\n"
    )
    assert strip_headers(post).startswith("In article")
    assert "quoted" not in strip_quotes(post) and "My answer." in strip_quotes(post)
    assert strip_footers("body\n-- \nsig").strip() == "body"
    long_tail = "body\n--\n" + "\n".join(f"line {i}" for i in range(20))
    assert strip_footers(long_tail) == long_tail  # not a short signature: kept
    out = clean_post(post, headers=True, quotes=True, footers=True)
    assert out == "My answer.\nSecond line."
    assert clean_post(post, headers=False, quotes=False, footers=False) == post.strip()


def test_newsgroups_corrupt_and_missing(tmp_path):
    (tmp_path / "20news-bydate.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(OSError, match="20news-bydate.tar.gz"):
        DATASETS.build("20newsgroups", root=tmp_path, split="test", use_cache=False)
    with pytest.raises(FileNotFoundError, match="20news-bydate"):
        DATASETS.build("20newsgroups", root=tmp_path / "none", split="test", use_cache=False)


# -------------------------------------------------------------------------------------- CIFAR


@pytest.fixture(scope="session")
def cifar(data_root, cache):
    require_dataset(data_root, "cifar10_jpg", "CIFAR-10-images.tar.gz")
    return load_cifar10(data_root, cache_dir=cache)


def test_cifar_jpeg_counts_shapes_and_pixels(data_root, cifar, cache):
    assert cifar["x_train"].shape == (50000, 32, 32, 3) and cifar["x_test"].shape[0] == 10000
    assert cifar["x_train"].dtype == np.uint8
    assert np.bincount(cifar["y_train"]).tolist() == [5000] * 10
    assert np.bincount(cifar["y_test"]).tolist() == [1000] * 10
    assert cifar["classes"][0] == "airplane" and cifar["classes"][9] == "truck"
    # one image against a direct PIL decode of the tar member
    from PIL import Image

    with tarfile.open(data_root / "cifar10_jpg" / "CIFAR-10-images.tar.gz") as tf:
        ref = np.asarray(Image.open(tf.extractfile("test/airplane/0000.jpg")).convert("RGB"))
    np.testing.assert_array_equal(cifar["x_test"][0], ref)
    ds = DATASETS.build("cifar10", root=data_root, split="test", normalize=False, cache_dir=cache)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and int(y) == 0
    torch.testing.assert_close(x, torch.from_numpy(ref.copy()).permute(2, 0, 1).float() / 255)


def _write_pickles(folder, rng):
    folder.mkdir(parents=True)
    batches = {}
    for name, n in [(f"data_batch_{i}", 6) for i in range(1, 6)] + [("test_batch", 4)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        batches[name] = (data, labels)
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f)
    meta = {b"label_names": [c.encode() for c in "abcdefghij"]}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return batches


def test_cifar_pickle_layout(tmp_path):
    batches = _write_pickles(tmp_path / "cifar-10-batches-py", np.random.default_rng(0))
    d = load_cifar10(tmp_path, use_cache=False)
    assert d["x_train"].shape == (30, 32, 32, 3) and d["classes"] == list("abcdefghij")
    data, labels = batches["data_batch_2"]
    for k in range(6):  # loop reference: pixel (r, c) of channel ch sits at ch*1024 + r*32 + c
        img = d["x_train"][6 + k]
        for ch in range(3):
            for r in (0, 17, 31):
                for c in (0, 5, 31):
                    assert img[r, c, ch] == data[k, ch * 1024 + r * 32 + c]
    assert d["y_train"][6:12].tolist() == labels
    ds = DATASETS.build("cifar10", root=tmp_path, split="test", use_cache=False)
    assert len(ds) == 4 and ds.info.class_names == tuple("abcdefghij")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x04truncated")
    with pytest.raises(OSError, match="test_batch"):
        load_cifar10(tmp_path, use_cache=False)


def test_cifar_jpeg_folders_and_corrupt(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for part in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / part / cls).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / part / cls / "0000.jpg", quality=95
            )
    d = read_cifar_jpegs(tmp_path)
    assert d["classes"] == ["cat", "dog"] and d["x_train"].shape == (2, 32, 32, 3)
    (tmp_path / "train" / "dog" / "0001.jpg").write_bytes(b"\xff\xd8not a jpeg")
    with pytest.raises(OSError, match="0001.jpg"):
        read_cifar_jpegs(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "CIFAR-10-images.tar.gz").write_bytes(b"\x1f\x8b\x08\x00xx")
    with pytest.raises(OSError, match="CIFAR-10-images.tar.gz"):
        load_cifar10(bad, use_cache=False)
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found"):
        load_cifar10(tmp_path / "empty", use_cache=False)


# ------------------------------------------------------------------------------ Fashion-MNIST


def test_fashion_mnist_real(cache):
    if not SYSTEM_DIR.is_dir():
        require_dataset(SYSTEM_DIR)
    tr = DATASETS.build("fashion_mnist", split="trainval", cache_dir=cache)
    te = DATASETS.build("fashion_mnist", split="test", cache_dir=cache)
    assert (len(tr), len(te)) == (60000, 10000)
    assert torch.bincount(tr.targets).tolist() == [6000] * 10
    x, y = tr[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == torch.int64


def test_idx_reader_gz_plain_and_errors(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    labs = np.array([1, 9, 0], np.uint8)
    raw_i = bytes([0, 0, 8, 3]) + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    raw_l = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big")
    for stem, hdr, arr in [
        ("train-images-idx3-ubyte", raw_i, imgs),
        ("t10k-images-idx3-ubyte", raw_i, imgs),
        ("train-labels-idx1-ubyte", raw_l, labs),
    ]:
        (tmp_path / (stem + ".gz")).write_bytes(gzip.compress(hdr + arr.tobytes()))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(raw_l + labs.tobytes())  # not gzipped
    ds = DATASETS.build("fashion_mnist", root=tmp_path, split="test", use_cache=False)
    assert len(ds) == 3 and ds.targets.tolist() == [1, 9, 0]
    torch.testing.assert_close(ds[1][0][0], torch.from_numpy(imgs[1]).float() / 255)
    trunc = tmp_path / "trunc-idx1-ubyte.gz"
    trunc.write_bytes(gzip.compress(raw_l + labs.tobytes())[:-6])
    with pytest.raises(OSError, match="trunc-idx1-ubyte.gz"):
        read_idx(trunc)
    short = tmp_path / "short-idx1-ubyte"
    short.write_bytes(raw_l + labs.tobytes()[:2])
    with pytest.raises(ValueError, match="short-idx1-ubyte"):
        read_idx(short)
    monkeypatch.setattr(fashion_mnist_module, "SYSTEM_DIR", tmp_path / "no-debian-copy")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        DATASETS.build("fashion_mnist", root=tmp_path / "none", use_cache=False)


# ------------------------------------------------------------------------------ long-tail/val


def test_long_tailed_counts_reference():
    for n_max, c, r in [(5000, 10, 10), (5000, 10, 50), (5000, 10, 100), (500, 100, 100)]:
        got = long_tailed_counts(n_max, c, r).tolist()
        ref = [max(int(np.floor(n_max * r ** (-k / (c - 1)) + 1e-9)), 1) for k in range(c)]
        assert got == ref and got[0] == n_max and got[-1] == n_max // r


def test_long_tailed_cifar_and_validation(cifar, data_root, cache):
    lt = DATASETS.build(
        "cifar10", root=data_root, split="trainval", imbalance_ratio=100, cache_dir=cache
    )
    assert torch.bincount(lt.targets).tolist() == long_tailed_counts(5000, 10, 100).tolist()
    assert len(lt) == 12406  # the usual CIFAR-10-LT (r = 100) size
    again = DATASETS.build(
        "cifar10", root=data_root, split="trainval", imbalance_ratio=100, cache_dir=cache
    )
    assert torch.equal(lt.indices, again.indices)
    other = DATASETS.build(
        "cifar10", root=data_root, split="trainval", imbalance_ratio=100, seed=1, cache_dir=cache
    )
    assert not torch.equal(lt.indices, other.indices)
    tr = DATASETS.build("cifar10", root=data_root, split="train", cache_dir=cache)
    va = DATASETS.build("cifar10", root=data_root, split="val", cache_dir=cache)
    assert (len(tr), len(va)) == (45000, 5000)
    assert torch.bincount(va.targets).tolist() == [500] * 10
    assert not set(tr.indices.tolist()) & set(va.indices.tolist())
    lt_tr = DATASETS.build(
        "cifar10", root=data_root, split="train", imbalance_ratio=10, cache_dir=cache
    )
    assert torch.bincount(lt_tr.targets).tolist() == long_tailed_counts(4500, 10, 10).tolist()
    assert not set(lt_tr.indices.tolist()) & set(va.indices.tolist())
    x, y = lt_tr[3]
    assert int(y) == int(lt_tr.targets[3]) and x.shape == (3, 32, 32)
    small = DATASETS.build(
        "cifar10", root=data_root, split="train", max_per_class=300, cache_dir=cache
    )
    assert torch.bincount(small.targets).tolist() == [300] * 10
    assert set(small.indices.tolist()) <= set(tr.indices.tolist())


def test_stratified_split_and_errors(generator):
    y = torch.randint(0, 5, (997,), generator=generator)
    rest, held = stratified_split(y, 0.2, generator=torch.Generator().manual_seed(0))
    assert sorted(torch.cat([rest, held]).tolist()) == list(range(997))
    for c in range(5):
        n = int((y == c).sum())
        assert int((y[held] == c).sum()) == round(0.2 * n)
    multi = (torch.rand(50, 4, generator=generator) > 0.6).float()
    r2, h2 = stratified_split(multi, 0.3, generator=generator)
    assert len(r2) + len(h2) == 50
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(y, 1.5)
    with pytest.raises(ValueError, match="exceeds"):
        long_tailed_indices(y, 10, n_max=10**6)
    with pytest.raises(ValueError, match="split must be"):
        select_split("dev", None)


def test_select_split_max_per_class():
    from calibrant.data.base import ArrayDataset, DatasetInfo

    y = torch.arange(4).repeat_interleave(torch.tensor([50, 40, 30, 20]))
    ds = ArrayDataset(torch.zeros(len(y), 1), y, DatasetInfo("t", 4, tuple("abcd")))
    val = select_split("val", ds, val_fraction=0.1, max_per_class=5)
    assert torch.bincount(val.targets).tolist() == [5, 4, 3, 2]  # validation is never capped
    train = select_split("train", ds, val_fraction=0.1, max_per_class=7)
    assert torch.bincount(train.targets).tolist() == [7] * 4
    assert not set(train.indices.tolist()) & set(val.indices.tolist())
    lt = select_split("train", ds, val_fraction=0.1, imbalance_ratio=7, max_per_class=14)
    assert torch.bincount(lt.targets).tolist() == long_tailed_counts(14, 4, 7).tolist()
    with pytest.raises(ValueError, match="exceeds"):
        select_split("train", ds, val_fraction=0.1, max_per_class=19)

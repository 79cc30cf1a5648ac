"""MULAN multi-label benchmarks (scene, yeast, emotions, medical, enron) from ARFF + XML files.

A MULAN set is ``NAME-train.arff`` / ``NAME-test.arff`` with the label names in ``NAME.xml``: the
attributes named in the XML are the 0/1 labels (in XML order, wherever they sit in the ARFF), every
other attribute is a feature. The ARFF reader here handles dense rows and sparse rows
(``{index value, ...}``, absent entries are 0), numeric/real/integer attributes and nominal ones
(the value becomes its index in the declared list, so ``{0,1}`` maps "0"->0, "1"->1), quoted names
and ``%`` comments. Features are standardised with the mean and standard deviation of the train part
(constant features get a unit scale); targets are float32 ``(C,)`` in {0, 1}.

Example:
    >>> import tempfile, pathlib
    >>> text = '''@relation t
    ... @attribute a numeric
    ... @attribute 'lab 1' {0,1}
    ... @data
    ... 0.5,1
    ... {0 2.5}
    ... '''
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = pathlib.Path(d) / "t.arff"; _ = p.write_text(text)
    ...     names, x = read_arff(p)
    >>> names, x.tolist()
    (['a', 'lab 1'], [[0.5, 1.0], [2.5, 0.0]])
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

from calibrant.data.base import ArrayDataset, DatasetInfo, dataset_dir, require_files
from calibrant.data.cache import cached
from calibrant.registry import DATASETS

__all__ = ["read_arff", "read_label_xml", "load_mulan", "mulan", "MULAN_SETS"]

MULAN_SETS = ("scene", "yeast", "emotions", "medical", "enron")

_ATTR_RE = re.compile(r"^@attribute\s+('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+)\s+(.+)$", re.I)


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        s = s[1:-1].replace("\\'", "'").replace('\\"', '"')
    return s


def _parse_type(spec: str, where: str):
    spec = spec.strip()
    if spec.startswith("{"):
        if not spec.endswith("}"):
            raise ValueError(f"{where}: unterminated nominal list {spec!r}")
        return [_unquote(v) for v in spec[1:-1].split(",")]
    if spec.lower() in ("numeric", "real", "integer"):
        return None
    raise ValueError(f"{where}: unsupported attribute type {spec!r}")


def read_arff(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read an ARFF file into attribute names and a dense float32 ``(N, A)`` array.

    Missing values (``?``) become NaN. Nominal values become their index in the declared list.

    Raises:
        ValueError: naming the file and line on a malformed header or data row.
    """
    path = Path(path)
    names: list[str] = []
    kinds: list[list[str] | None] = []
    rows: list[np.ndarray] = []
    in_data = False
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("%"):
            continue
        where = f"{path}:{lineno}"
        if not in_data:
            low = line.lower()
            if low.startswith("@relation"):
                continue
            if low.startswith("@attribute"):
                m = _ATTR_RE.match(line)
                if not m:
                    raise ValueError(f"{where}: malformed attribute line {raw!r}")
                names.append(_unquote(m.group(1)))
                kinds.append(_parse_type(m.group(2), where))
                continue
            if low.startswith("@data"):
                in_data = True
                lookups = [None if k is None else {v: i for i, v in enumerate(k)} for k in kinds]
                continue
            raise ValueError(f"{where}: unexpected header line {raw!r}")
        rows.append(_parse_row(line, names, kinds, lookups, where))
    if not in_data:
        raise ValueError(f"{path}: no @data section (truncated or not an ARFF file)")
    data = np.stack(rows) if rows else np.zeros((0, len(names)), np.float32)
    return names, data


def _value(token: str, lookup, where: str, col: int) -> float:
    token = _unquote(token)
    if token == "?":
        return float("nan")
    if lookup is None:
        try:
            return float(token)
        except ValueError:
            raise ValueError(f"{where}: non-numeric value {token!r} in column {col}") from None
    try:
        return float(lookup[token])
    except KeyError:
        raise ValueError(f"{where}: value {token!r} not declared for column {col}") from None


def _parse_row(line: str, names, kinds, lookups, where: str) -> np.ndarray:
    row = np.zeros(len(names), np.float32)
    if line.startswith("{"):
        if not line.endswith("}"):
            raise ValueError(f"{where}: unterminated sparse row")
        body = line[1:-1].strip()
        for item in body.split(",") if body else []:
            parts = item.split(None, 1)
            if len(parts) != 2:
                raise ValueError(f"{where}: malformed sparse entry {item!r}")
            try:
                col = int(parts[0])
            except ValueError:
                raise ValueError(f"{where}: bad sparse index {parts[0]!r}") from None
            if not 0 <= col < len(names):
                raise ValueError(f"{where}: sparse index {col} outside 0..{len(names) - 1}")
            row[col] = _value(parts[1], lookups[col], where, col)
        return row
    tokens = line.split(",")
    if len(tokens) != len(names):
        raise ValueError(f"{where}: {len(tokens)} values for {len(names)} attributes")
    for col, tok in enumerate(tokens):
        row[col] = _value(tok, lookups[col], where, col)
    return row


def read_label_xml(path: str | os.PathLike) -> list[str]:
    """Label names of a MULAN XML file, in document order (nested hierarchies flattened).

    Raises:
        ValueError: naming the file when it is not valid XML or holds no labels.
    """
    try:
        tree = ET.parse(path)
    except ET.ParseError as err:
        raise ValueError(f"cannot parse label file {str(path)!r}: {err}") from err
    names = [el.get("name") for el in tree.iter() if el.tag.split("}")[-1] == "label"]
    if not names:
        raise ValueError(f"label file {str(path)!r} names no labels")
    return names


def load_mulan(folder: Path, name: str, cache_dir=None, use_cache: bool = True) -> dict:
    """Decode ``NAME-train.arff``, ``NAME-test.arff`` and ``NAME.xml`` (cached).

    Returns a dict with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (float32, unscaled),
    ``feature_names`` and ``label_names``.
    """
    files = require_files(
        [folder / f"{name}-train.arff", folder / f"{name}-test.arff", folder / f"{name}.xml"],
        f"MULAN set {name!r} in {str(folder)!r}",
    )

    def build():
        labels = read_label_xml(files[2])
        out = {"label_names": labels}
        for part, path in (("train", files[0]), ("test", files[1])):
            attrs, data = read_arff(path)
            missing = [lab for lab in labels if lab not in attrs]
            if missing:
                raise ValueError(f"{path}: labels {missing[:5]} of {files[2].name} not found")
            pos = {a: i for i, a in enumerate(attrs)}
            label_cols = [pos[lab] for lab in labels]
            feat_cols = [i for i in range(len(attrs)) if i not in set(label_cols)]
            y = data[:, label_cols]
            if not np.isin(y, (0.0, 1.0)).all():
                raise ValueError(f"{path}: label columns hold values other than 0/1")
            out[f"x_{part}"] = np.ascontiguousarray(data[:, feat_cols])
            out[f"y_{part}"] = np.ascontiguousarray(y)
            out["feature_names"] = [attrs[i] for i in feat_cols]
        return out

    return cached(f"mulan-{name}", files, {}, build, cache_dir=cache_dir, use_cache=use_cache)


@DATASETS.register("mulan", task="multilabel", spatial_dims=0)
def mulan(
    root=None,
    split: str = "train",
    name: str = "scene",
    *,
    standardize: bool = True,
    cache_dir=None,
    use_cache: bool = True,
    transform=None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ArrayDataset:
    """A MULAN set: ``split`` is ``"train"``, ``"val"``, ``"trainval"`` or ``"test"``.

    Items are ``(x (F,), y (C,))`` float32. ``"val"`` is a seeded random ``val_fraction`` of the
    official train part and ``"train"`` the rest (MULAN has no official validation split; model
    selection and ALM multipliers need one); ``"trainval"`` is the whole official train part.

    Args:
        root: data root holding ``mulan/NAME/`` (or the ``NAME`` folder itself).
        split: ``"train"``, ``"val"``, ``"trainval"`` or ``"test"``.
        name: one of :data:`MULAN_SETS` (any MULAN set in the same layout works).
        standardize: z-score the features with train-part statistics.
        cache_dir: decode cache folder (see :func:`calibrant.data.cache.cached`).
        use_cache: ``False`` decodes without reading or writing the cache.
        transform: optional callable ``(x, y) -> (x, y)``.
        val_fraction: share of the official train part held out as ``"val"``.
        seed: seed of the held-out draw.
    """
    if split not in ("train", "val", "trainval", "test"):
        raise ValueError(f"split must be 'train', 'val', 'trainval' or 'test', got {split!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if root is not None and (Path(root) / f"{name}-train.arff").exists():
        folder = Path(root)
    else:
        folder = dataset_dir(
            root, "mulan", name, expected=f"{name}-train.arff, {name}-test.arff, {name}.xml"
        )
    d = load_mulan(folder, name, cache_dir, use_cache)
    n_train = d["x_train"].shape[0]
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed)).numpy()
    n_val = max(1, round(val_fraction * n_train))
    rows = {"val": np.sort(perm[:n_val]), "train": np.sort(perm[n_val:])}
    part = "test" if split == "test" else "train"
    x, y = d[f"x_{part}"], d[f"y_{part}"]
    if split in rows:
        x, y = x[rows[split]], y[rows[split]]
    if np.isnan(x).any():
        raise ValueError(f"MULAN set {name!r} ({split}) has missing feature values")
    if standardize:  # statistics of the rows the model trains on
        fit_rows = d["x_train"] if split == "trainval" else d["x_train"][rows["train"]]
        mean = fit_rows.mean(0, dtype=np.float64)
        std = fit_rows.std(0, dtype=np.float64)
        std[std < 1e-12] = 1.0
        x = ((x - mean) / std).astype(np.float32)
    info = DatasetInfo(
        f"mulan_{name}",
        len(d["label_names"]),
        tuple(d["label_names"]),
        task="multilabel",
        in_channels=x.shape[1],
    )
    return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y), info, transform)


for _set in MULAN_SETS:
    DATASETS.register(f"mulan_{_set}", task="multilabel", spatial_dims=0)(
        lambda root=None, split="train", _n=_set, **opts: mulan(root, split, _n, **opts)
    )

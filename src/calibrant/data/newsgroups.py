r"""20 Newsgroups, "by-date" split (11314 train / 7532 test posts, 20 classes), as TF-IDF vectors.

The source is the ``20news-bydate.tar.gz`` tarball or its extracted folders
``20news-bydate-train/<group>/<id>`` and ``20news-bydate-test/<group>/<id>`` (any prefix;
hidden files such as ``.DS_Store`` are skipped). Posts are decoded as latin-1. Optional cleaning,
implemented here (nothing is downloaded):

* ``strip_headers``: drop everything up to the first blank line (the e-mail header block);
* ``strip_quotes``: drop quoted lines (starting with ``>`` or ``|``) and attribution lines such as
  "In article <...>, X writes:" or lines ending in "writes:"/"wrote:"/"says:";
* ``strip_footers``: drop a trailing signature, i.e. everything after the last line that is
  ``--`` (optionally followed by spaces) when that block is short (at most 10 lines), else after
  the last line made only of ``-``/``=``/``_`` characters when that block is short.

Features are scikit-learn ``TfidfVectorizer`` vectors (vocabulary and idf fit on the train part
only; ``max_features`` keeps the most frequent terms), stored sparse and densified per item:
items are ``(x float32 (V,), y int64)``.

Example:
    >>> post = ("From: a@b\nSubject: hi\n\nIn article <1@x>, b@c writes:\n"
    ...         "> old\nnew text\n--\nsig")
    >>> clean_post(post, headers=True, quotes=True, footers=True)
    'new text'
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from calibrant.data.base import DatasetInfo, dataset_dir, tree_files
from calibrant.data.cache import cached
from calibrant.data.longtail import select_split
from calibrant.registry import DATASETS

__all__ = [
    "strip_headers",
    "strip_quotes",
    "strip_footers",
    "clean_post",
    "read_newsgroups",
    "NewsgroupsTfidf",
    "newsgroups",
]

_TAR = "20news-bydate.tar.gz"
_PART_RE = re.compile(r"(?:^|/)20news-bydate-(train|test)/([^/]+)/([^/]+)$")
_ATTRIBUTION_RE = re.compile(
    r"(^in article\b)|(\b(writes|wrote|says|said)\s*:\s*$)|(^on .*\bwrote\b)", re.I
)


def strip_headers(text: str) -> str:
    r"""Drop the header block: everything up to and including the first blank line.

    Example:
        >>> strip_headers("From: x\nSubject: y\n\nbody")
        'body'
    """
    _, sep, body = text.partition("\n\n")
    return body if sep else text


def strip_quotes(text: str) -> str:
    r"""Drop quoted lines (``>``/``|`` prefixes) and "... writes:" attribution lines.

    Example:
        >>> strip_quotes("a@b writes:\n> quoted\n|also\nmine")
        'mine'
    """
    keep = []
    for line in text.split("\n"):
        s = line.strip()
        if s.startswith((">", "|")) or _ATTRIBUTION_RE.search(s):
            continue
        keep.append(line)
    return "\n".join(keep)


def strip_footers(text: str, max_lines: int = 10) -> str:
    r"""Drop a short trailing signature block (see the module docstring for the rule).

    Example:
        >>> strip_footers("body\n-- \nJohn")
        'body'
        >>> strip_footers("body\n----------\nJohn\nphone")
        'body'
    """
    lines = text.rstrip("\n").split("\n")
    for rule in (r"^--\s*$", r"^[-=_]{2,}\s*$"):
        for i in range(len(lines) - 1, -1, -1):
            if re.match(rule, lines[i]):
                if len(lines) - i - 1 <= max_lines:
                    return "\n".join(lines[:i]).rstrip("\n")
                break
    return text


def clean_post(text: str, *, headers: bool, quotes: bool, footers: bool) -> str:
    """Apply the selected stripping steps (headers, then quotes, then footers) and trim."""
    if headers:
        text = strip_headers(text)
    if quotes:
        text = strip_quotes(text)
    if footers:
        text = strip_footers(text)
    return text.strip()


def _source(root) -> Path:
    if root is not None:
        p = Path(root).expanduser()
        for cand in (p, p / "20newsgroups"):
            if (cand / _TAR).exists() or (cand / "20news-bydate-train").is_dir():
                return cand
    folder = dataset_dir(
        root, "20newsgroups", expected=f"{_TAR} or 20news-bydate-train/ and 20news-bydate-test/"
    )
    if not (folder / _TAR).exists() and not (folder / "20news-bydate-train").is_dir():
        raise FileNotFoundError(
            f"20 Newsgroups not found in {str(folder)!r}: expected {_TAR} or the folders "
            "20news-bydate-train/<group>/ and 20news-bydate-test/<group>/"
        )
    return folder


def read_newsgroups(folder: Path) -> dict[str, list]:
    """Read raw posts: ``{"train": [(group, text)], "test": [...]}``, sorted by group and name.

    Raises:
        OSError: naming the tarball when it is truncated or not a gzip tar file.
    """
    posts: dict[str, list] = {"train": [], "test": []}
    for m, data, _ in tree_files(folder, _TAR, _PART_RE, "20 Newsgroups"):
        if not m.group(3).startswith("."):
            posts[m.group(1)].append((m.group(2), m.group(3), data.decode("latin-1")))
    for part in posts:
        if not posts[part]:
            raise FileNotFoundError(f"no 20news-bydate-{part}/<group>/<post> files in {folder}")
        posts[part].sort(key=lambda t: (t[0], int(t[1]) if t[1].isdigit() else t[1]))
        posts[part] = [(g, text) for g, _, text in posts[part]]
    return posts


class NewsgroupsTfidf(Dataset):
    """TF-IDF vectors of one by-date part: items ``(x (V,) float32, y int64)``.

    Args:
        root: data root holding ``20newsgroups/`` (or that folder).
        split: ``"train"`` or ``"test"``.
        max_features: vocabulary size (most frequent train terms); ``None`` keeps all.
        strip: any of ``"headers"``, ``"footers"``, ``"quotes"`` (default: none).
        sublinear_tf, min_df, stop_words: passed to ``TfidfVectorizer``.
        cache_dir, use_cache: decode cache.
    """

    def __init__(
        self,
        root=None,
        split: str = "train",
        *,
        max_features: int | None = 10000,
        strip: tuple[str, ...] = (),
        sublinear_tf: bool = True,
        min_df: int = 1,
        stop_words: str | None = "english",
        cache_dir=None,
        use_cache: bool = True,
        transform=None,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        bad = set(strip) - {"headers", "footers", "quotes"}
        if bad:
            raise ValueError(f"strip accepts headers, footers, quotes; got {sorted(bad)}")
        folder = _source(root)
        tar = folder / _TAR
        sources = [tar] if tar.exists() else sorted((folder).glob("20news-bydate-*/*/*"))
        options = {
            "max_features": max_features,
            "strip": sorted(strip),
            "sublinear_tf": sublinear_tf,
            "min_df": min_df,
            "stop_words": stop_words,
        }

        def build():
            # optional (the data extra) and slow to import: only a cache miss needs it
            from sklearn.feature_extraction.text import TfidfVectorizer

            posts = read_newsgroups(folder)
            groups = sorted({g for g, _ in posts["train"]})
            index = {g: i for i, g in enumerate(groups)}
            kw = {
                "headers": "headers" in strip,
                "quotes": "quotes" in strip,
                "footers": "footers" in strip,
            }
            texts = {p: [clean_post(t, **kw) for _, t in posts[p]] for p in posts}
            vec = TfidfVectorizer(
                max_features=max_features,
                sublinear_tf=sublinear_tf,
                min_df=min_df,
                stop_words=stop_words,
                dtype=np.float32,
            )
            out = {"groups": groups, "vocabulary": vec.fit(texts["train"]).get_feature_names_out()}
            for p in posts:
                out[f"x_{p}"] = vec.transform(texts[p]).tocsr()
                out[f"y_{p}"] = np.array([index[g] for g, _ in posts[p]], np.int64)
            return out

        d = cached(
            "20newsgroups",
            sources,
            options,
            build,
            cache_dir=cache_dir,
            use_cache=use_cache,
            data_root=folder,
        )
        self.x = d[f"x_{split}"]
        self.targets = torch.from_numpy(d[f"y_{split}"])
        self.vocabulary = list(d["vocabulary"])
        self.transform = transform
        self.info = DatasetInfo(
            "20newsgroups",
            len(d["groups"]),
            tuple(d["groups"]),
            task="multiclass",
            in_channels=self.x.shape[1],
        )

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.x[index].toarray()[0])
        y = self.targets[index]
        if self.transform is not None:
            x, y = self.transform(x, y)
        return x, y


@DATASETS.register("20newsgroups", task="multiclass", spatial_dims=0)
def newsgroups(root=None, split: str = "train", **opts) -> Dataset:
    """20 Newsgroups TF-IDF; ``split`` in train/val/trainval/test (val: stratified 10 % of train).

    ``val_fraction``, ``seed``, ``imbalance_ratio`` and ``max_per_class`` select the split (see
    :func:`calibrant.data.longtail.select_split`); other options go to :class:`NewsgroupsTfidf`.
    """
    sel = {
        k: opts.pop(k)
        for k in ("val_fraction", "seed", "imbalance_ratio", "max_per_class")
        if k in opts
    }
    return select_split(
        split,
        lambda: NewsgroupsTfidf(root, "train", **opts),
        lambda: NewsgroupsTfidf(root, "test", **opts),
        **sel,
    )

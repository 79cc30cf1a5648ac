"""Dataset loaders for the papers' benchmark formats, registered by name.

Importing this package registers ``acdc``, ``msd``, ``msd_hippocampus``, ``mulan``,
``mulan_<set>``, ``20newsgroups``, ``cifar10`` and ``fashion_mnist`` in
:data:`calibrant.registry.DATASETS`; each factory is ``build(root=None, split=..., **opts)``.
See ``docs/data.md``.
"""

from calibrant.data import (  # noqa: F401  (registers names)
    acdc,
    cifar,
    fashion_mnist,
    longtail,
    msd,
    mulan,
    newsgroups,
    transforms,
)
from calibrant.data.base import ArrayDataset, DatasetInfo, IndexedSubset
from calibrant.data.cache import cached
from calibrant.data.longtail import long_tailed, stratified_split, train_val_split

__all__ = [
    "ArrayDataset",
    "DatasetInfo",
    "IndexedSubset",
    "cached",
    "long_tailed",
    "stratified_split",
    "train_val_split",
]

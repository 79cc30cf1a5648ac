"""calibrant: training deep networks whose confidence can be trusted.

Losses, augmented-Lagrangian constraints, streaming calibration and segmentation metrics,
post-hoc calibrators, dataset loaders, models and a training engine. Importing the package
registers every method, metric, model and dataset by name (see :mod:`calibrant.registry`); the
benchmark suites (:mod:`calibrant.bench`) load on their first lookup in ``SUITES``.
"""

from calibrant import alm, data, losses, metrics, models, posthoc  # noqa: F401  (registers)
from calibrant._version import __version__
from calibrant.registry import (
    CALIBRATORS,
    DATASETS,
    LOSSES,
    METRICS,
    MODELS,
    SUITES,
)

__all__ = [
    "CALIBRATORS",
    "DATASETS",
    "LOSSES",
    "METRICS",
    "MODELS",
    "SUITES",
    "__version__",
]

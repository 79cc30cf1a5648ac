"""calibrant: training deep networks whose confidence can be trusted.

Losses, augmented-Lagrangian constraints, streaming calibration and segmentation metrics,
post-hoc calibrators, dataset loaders, models and a training engine. Importing the package
registers every method, metric, model and dataset by name (see :mod:`calibrant.registry`).
"""

from calibrant import alm, bench, data, losses, metrics, models, posthoc  # noqa: F401  (registers)
from calibrant.registry import (
    ALM_PRESETS,
    CALIBRATORS,
    DATASETS,
    LOSSES,
    METRICS,
    MODELS,
    SUITES,
)

__version__ = "0.1.0"

__all__ = [
    "ALM_PRESETS",
    "CALIBRATORS",
    "DATASETS",
    "LOSSES",
    "METRICS",
    "MODELS",
    "SUITES",
    "__version__",
]

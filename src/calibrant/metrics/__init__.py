"""Streaming calibration, segmentation and ranking metrics.

Each metric has a functional form and a :class:`torchmetrics.Metric` class with fixed-size sum
states over the same private kernels, so streaming over batches and DDP ranks is exact.
"""

from calibrant.metrics import protocols as _protocols  # noqa: F401  (registers paper_* entries)
from calibrant.metrics._curve import ReliabilityCurve
from calibrant.metrics.binary import *  # noqa: F403
from calibrant.metrics.binary import __all__ as _binary_all
from calibrant.metrics.calibration import *  # noqa: F403
from calibrant.metrics.calibration import __all__ as _calibration_all
from calibrant.metrics.classwise import *  # noqa: F403
from calibrant.metrics.classwise import __all__ as _classwise_all
from calibrant.metrics.items import *  # noqa: F403
from calibrant.metrics.items import __all__ as _items_all
from calibrant.metrics.multilabel import *  # noqa: F403
from calibrant.metrics.multilabel import __all__ as _multilabel_all
from calibrant.metrics.overconfidence import *  # noqa: F403
from calibrant.metrics.overconfidence import __all__ as _overconfidence_all
from calibrant.metrics.ranking import *  # noqa: F403
from calibrant.metrics.ranking import __all__ as _ranking_all
from calibrant.metrics.reliability import RegionReliabilityCurves
from calibrant.metrics.resampled import metric_interval, resampled_metric
from calibrant.metrics.scores import *  # noqa: F403
from calibrant.metrics.scores import __all__ as _scores_all
from calibrant.metrics.segmentation import *  # noqa: F403
from calibrant.metrics.segmentation import __all__ as _segmentation_all

__all__ = [
    "RegionReliabilityCurves",
    "ReliabilityCurve",
    "metric_interval",
    "resampled_metric",
    *_binary_all,
    *_calibration_all,
    *_classwise_all,
    *_items_all,
    *_multilabel_all,
    *_overconfidence_all,
    *_ranking_all,
    *_scores_all,
    *_segmentation_all,
]

"""Calibration-aware losses: each a pure function plus a thin ``nn.Module``, registered by name."""

from calibrant.losses.bwcr import *  # noqa: F403
from calibrant.losses.bwcr import __all__ as _bwcr_all
from calibrant.losses.classification import *  # noqa: F403
from calibrant.losses.classification import __all__ as _classification_all
from calibrant.losses.combine import *  # noqa: F403
from calibrant.losses.combine import __all__ as _combine_all
from calibrant.losses.logarithmic import *  # noqa: F403
from calibrant.losses.logarithmic import __all__ as _logarithmic_all
from calibrant.losses.multilabel import *  # noqa: F403
from calibrant.losses.multilabel import __all__ as _multilabel_all
from calibrant.losses.overlap import *  # noqa: F403
from calibrant.losses.overlap import __all__ as _overlap_all
from calibrant.losses.spa import *  # noqa: F403
from calibrant.losses.spa import __all__ as _spa_all
from calibrant.losses.spatial import *  # noqa: F403
from calibrant.losses.spatial import __all__ as _spatial_all

__all__ = [
    *_bwcr_all,
    *_classification_all,
    *_combine_all,
    *_logarithmic_all,
    *_multilabel_all,
    *_overlap_all,
    *_spa_all,
    *_spatial_all,
]

"""Dataset loaders for the papers' benchmark formats, registered by name."""

from calibrant.data import acdc, longtail, msd, transforms  # noqa: F401
from calibrant.data.base import DatasetInfo

__all__ = ["DatasetInfo"]

"""Post-hoc calibrators fitted on held-out logits (scikit-learn shape: ``fit`` then ``forward``)."""

from calibrant.posthoc.links import PhiCorrection, SPALink
from calibrant.posthoc.temperature import (
    DEFAULT_GRID,
    ClasswiseTemperature,
    TemperatureScaling,
    VectorScaling,
)

__all__ = [
    "DEFAULT_GRID",
    "ClasswiseTemperature",
    "PhiCorrection",
    "SPALink",
    "TemperatureScaling",
    "VectorScaling",
]

"""calibrant's ALM methods and losses inside other training frameworks.

- :mod:`calibrant.integrations.lightning`: :class:`~calibrant.integrations.lightning.ALMCallback`,
  a PyTorch Lightning callback (extra ``calibrant[lightning]``).
- :mod:`calibrant.integrations.monai`: :class:`~calibrant.integrations.monai.ALMHandler`, an
  Ignite handler for MONAI's ``SupervisedEvaluator`` (extra ``calibrant[monai]``).
- :mod:`calibrant.integrations.targets`: MONAI's label layouts (``(B, 1, *spatial)`` labels,
  one-hot) for calibrant's losses and ALM terms (no extra needed).

Both framework modules drive the ALM terms through :class:`ALMDriver`, exactly as
:func:`calibrant.engine.fit` does. Only this package and ``targets`` are imported here, so
``import calibrant.integrations`` needs neither Lightning nor MONAI.
"""

from calibrant.integrations._alm import ALMDriver, slot_names, unpadded_count
from calibrant.integrations.targets import (
    MonaiTargets,
    as_index_target,
    as_onehot_target,
    plain_tensor,
)

__all__ = [
    "ALMDriver",
    "MonaiTargets",
    "as_index_target",
    "as_onehot_target",
    "plain_tensor",
    "slot_names",
    "unpadded_count",
]


def _require(module: str, extra: str, what: str):
    """Import ``module`` or raise an ImportError that names the calibrant extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{what} needs the '{module.split('.')[0]}' package: pip install 'calibrant[{extra}]'"
        ) from err

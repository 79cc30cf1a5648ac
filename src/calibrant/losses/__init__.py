"""Calibration-aware losses: each a pure function plus a thin ``nn.Module``, registered by name.

Every public module of this package is imported here, so its losses register in
:data:`calibrant.registry.LOSSES`, and its ``__all__`` is re-exported: adding a loss is one new
file with one registration (``docs/adding_a_loss.md``). Private modules (``_base``) hold the
shared plumbing.
"""

import importlib
import pkgutil

__all__: list[str] = []

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in _module.__all__:
        globals()[_name] = getattr(_module, _name)
    __all__ += _module.__all__

del _info, _module, _name

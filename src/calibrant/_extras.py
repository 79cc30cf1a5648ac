"""The installed version and the optional-dependency extras (``calibrant[cli]``, ...).

``import calibrant`` needs only the runtime dependencies (torch, numpy, scipy, torchmetrics,
pyyaml, tqdm). The command line's training and evaluation need the ``cli`` extra (plots, dataset
readers, TensorBoard); the framework integrations need ``monai`` or ``lightning``. A missing
package is reported with the extra that brings it.

Example:
    >>> from calibrant._extras import extra_for_module
    >>> extra_for_module("sklearn.model_selection"), extra_for_module("numpy")
    ('cli', None)
"""

from __future__ import annotations

import importlib.metadata as md
import re

from calibrant._version import __version__

__all__ = [
    "MissingExtraError",
    "extra_for_module",
    "missing_from_extra",
    "require_extra",
    "version",
]

# import name -> (distribution, extra); the extras' lists in pyproject.toml are the reference
_MODULES = {
    "matplotlib": ("matplotlib", "cli"),
    "h5py": ("h5py", "cli"),
    "nibabel": ("nibabel", "cli"),
    "sklearn": ("scikit-learn", "cli"),
    "PIL": ("pillow", "cli"),
    "tensorboard": ("tensorboard", "cli"),
    "monai": ("monai", "monai"),
    "ignite": ("pytorch-ignite", "monai"),
    "lightning": ("lightning", "lightning"),
}


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def version() -> str:
    """The installed distribution's version (``calibrant.__version__`` from a bare checkout)."""
    try:
        return md.version("calibrant")
    except md.PackageNotFoundError:
        return __version__


def extra_for_module(module: str | None) -> str | None:
    """The extra whose packages provide the top-level module of ``module``, if any."""
    if not module:
        return None
    entry = _MODULES.get(module.split(".")[0])
    return entry[1] if entry else None


def _extra_distributions(extra: str) -> list[str] | None:
    """Distribution names the installed metadata lists for ``extra`` (None without metadata)."""
    try:
        requires = md.requires("calibrant") or []
    except md.PackageNotFoundError:
        return None
    marker = re.compile(r"""extra\s*==\s*["']""" + re.escape(extra) + """["']""")
    names = []
    for req in requires:
        spec, _, env = req.partition(";")
        if marker.search(env):
            names.append(re.split(r"[\s<>=!~\[(;]", spec.strip(), maxsplit=1)[0])
    return names


def missing_from_extra(extra: str) -> list[str]:
    """The distributions of ``extra`` that are not installed."""
    names = _extra_distributions(extra)
    if names is None:  # running from a source tree without metadata: check the known modules
        names = [dist for dist, ex in _MODULES.values() if ex == extra]
    missing = []
    for name in names:
        try:
            md.version(name)
        except md.PackageNotFoundError:
            missing.append(name)
    return missing


def require_extra(extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` naming the extra if any of its packages is missing."""
    missing = missing_from_extra(extra)
    if missing:
        raise MissingExtraError(
            f"{what} needs {', '.join(missing)} (optional dependencies of calibrant); install "
            f"them with: pip install 'calibrant[{extra}]'"
        )


def explain_import_error(err: ImportError) -> str | None:
    """A message naming the extra for an ImportError of an optional package, else None."""
    if isinstance(err, MissingExtraError):
        return str(err)
    name = getattr(err, "name", None)
    extra = extra_for_module(name)
    if extra is None:
        return None
    return (
        f"the optional package {name.split('.')[0]!r} is not installed; install it with: "
        f"pip install 'calibrant[{extra}]'"
    )

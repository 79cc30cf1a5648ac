"""Experiment configs: YAML presets plus dotted ``key=value`` overrides.

A config is a nested dict with one section per component (``data``, ``model``, ``loss``,
``optim``, ``sched``, ``train``, ``eval``). Each component section has a ``name`` naming a
registry entry; the other keys are passed to its factory. A config file may start from another
with ``base: <preset or file>`` (deep-merged; a section with another ``name`` replaces the
base's; a relative file is found beside the file that names it). On the command line
``loss=crac`` selects a component by name (keeping nothing of the old section's keyword
arguments) and ``loss.rho_init=1`` sets one argument. Values are parsed as YAML scalars or flow
values (``true``, ``null``, ``[1, 2]``, ``{a: 1}``), by :func:`yaml_load`.

Numbers are read as a user types them: unlike YAML 1.1 (PyYAML's default, which reads ``1e-3``
as the *string* ``"1e-3"`` because it has no dot), :func:`yaml_load` reads ``1e-3``, ``5e-4``,
``1E-3``, ``-2e+1`` and ``.5`` as floats, in override values and config files alike.

Every key and value is checked by :func:`calibrant.config_schema.validate_config` (the CLI does
it before anything is written).

Example:
    >>> from calibrant.config import apply_overrides
    >>> cfg = {"loss": {"name": "ce"}, "optim": {"name": "adam"}}
    >>> apply_overrides(cfg, ["loss=mbls", "loss.margin=5", "optim.lr=1e-3"])
    {'loss': {'name': 'mbls', 'margin': 5}, 'optim': {'name': 'adam', 'lr': 0.001}}
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "load_config",
    "apply_overrides",
    "merge",
    "preset_names",
    "parse_value",
    "yaml_load",
]

COMPONENTS = ("data", "model", "loss", "optim", "sched")

# YAML 1.1's float pattern with two changes: the mantissa may lack a dot when an exponent
# follows (1e-3, 5E4) and the exponent's sign is optional (1.0e3). YAML 1.2 reads these as
# floats too; PyYAML (YAML 1.1) reads them as strings.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_FLOAT_TAG = "tag:yaml.org,2002:float"


def _yaml():
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - pyyaml is a declared dependency
        raise ImportError("calibrant configs need PyYAML: pip install pyyaml") from e
    return yaml


@functools.cache
def _loader() -> type:
    """A ``yaml.SafeLoader`` subclass whose implicit float resolver reads ``1e-3`` as a number."""
    yaml = _yaml()

    class Loader(yaml.SafeLoader):
        pass

    # a fresh copy of every resolver list: add_implicit_resolver would append to the lists that
    # SafeLoader shares with its subclasses (PyYAML copies only the dict), changing yaml itself
    resolvers = {
        first: [(tag, _FLOAT if tag == _FLOAT_TAG else regexp) for tag, regexp in entries]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for first in "-+0123456789.":  # the float resolver is tried first, as in SafeLoader
        entries = resolvers.setdefault(first, [])
        if not any(tag == _FLOAT_TAG for tag, _ in entries):
            entries.insert(0, (_FLOAT_TAG, _FLOAT))
    Loader.yaml_implicit_resolvers = resolvers
    return Loader


def yaml_load(text: str) -> Any:
    """Parse YAML text safely, reading ``1e-3``-style numbers as floats.

    Example:
        >>> yaml_load("{lr: 1e-3, wd: 5E-4, x: -2e+1, y: .5, n: 1_000, s: 1e-3x}")
        {'lr': 0.001, 'wd': 0.0005, 'x': -20.0, 'y': 0.5, 'n': 1000, 's': '1e-3x'}
    """
    return _yaml().load(text, Loader=_loader())


def parse_value(text: str) -> Any:
    """Parse one override value as a YAML scalar/flow value (``""`` stays the empty string).

    Example:
        >>> [parse_value(t) for t in ("1e-3", "3", "true", "null", "[1, 2]", "adam")]
        [0.001, 3, True, None, [1, 2], 'adam']
    """
    return yaml_load(text) if text != "" else ""


def preset_names() -> list[str]:
    """Names of the configs shipped with calibrant (``calibrant/configs/*.yaml``)."""
    folder = resources.files("calibrant") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _close(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."


def load_config(name_or_path: str | Path, *, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a shipped preset by name, or a YAML file by path (``base:`` is resolved).

    Raises:
        FileNotFoundError: for a missing file, or a preset name that does not exist (naming
            the closest presets and listing all).
        ValueError: when the file is not valid YAML, does not hold a mapping, or its ``base``
            chain loops.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(name_or_path)!r} not found")
        text, where = path.read_text(), str(path.resolve())
    else:
        shipped = resources.files("calibrant") / "configs" / f"{name_or_path}.yaml"
        if not shipped.is_file():
            presets = preset_names()
            raise FileNotFoundError(
                f"no config file or preset {str(name_or_path)!r}"
                f"{_close(str(name_or_path), presets)} Known presets: {', '.join(presets)}"
            )
        text, where = shipped.read_text(), f"preset {name_or_path}"
    if where in _seen:
        raise ValueError(f"config {str(name_or_path)!r}: 'base' loops ({' -> '.join(_seen)})")
    try:
        cfg = yaml_load(text) or {}
    except _yaml().YAMLError as e:
        raise ValueError(f"config {str(name_or_path)!r} is not valid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(
            f"config {str(name_or_path)!r} must hold a mapping, got {type(cfg).__name__}"
        )
    base = cfg.pop("base", None)
    if base is None:
        return cfg
    if not isinstance(base, str):
        raise ValueError(f"config {str(name_or_path)!r}: 'base' must name a preset or a file")
    beside = path.parent / base
    if path.is_file() and Path(base).suffix in (".yaml", ".yml") and beside.is_file():
        base = str(beside)  # a relative base file is found beside the file that names it
    return merge(load_config(base, _seen=(*_seen, where)), cfg)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; a section with a new ``name`` replaces it."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        old = out.get(key)
        renamed = (
            isinstance(value, dict)
            and isinstance(old, dict)
            and "name" in value
            and old.get("name") != value["name"]
        )
        if isinstance(value, dict) and isinstance(old, dict) and not renamed:
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``cfg`` with ``key=value`` / ``a.b.c=value`` overrides applied.

    Keys are not checked here: :func:`calibrant.config_schema.validate_config` checks the result.

    Raises:
        ValueError: for an override without ``=``, with an empty key part, with a value that is
            not valid YAML, or that descends into a non-mapping.
    """
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value or section.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ValueError(f"override {item!r}: empty key part in {key!r}")
        try:
            value = parse_value(text)
        except _yaml().YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({e})") from None
        if len(parts) == 1 and parts[0] in COMPONENTS and not isinstance(value, dict):
            cfg[parts[0]] = {"name": value}
            continue
        node = cfg
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(parts[: i + 1])
                raise ValueError(f"override {item!r}: {where!r} is not a section")
        node[parts[-1]] = value
    return cfg

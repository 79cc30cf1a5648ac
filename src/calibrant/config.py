"""Experiment configs: YAML presets plus dotted ``key=value`` overrides.

A config is a nested dict with one section per component (``data``, ``model``, ``loss``,
``optim``, ``sched``, ``train``, ``eval``). Each component section has a ``name`` naming a
registry entry; the other keys are passed to its factory. A config file may start from another
with ``base: <preset>`` (deep-merged; a section with another ``name`` replaces the base's).
On the command line ``loss=crac`` selects a component by name (keeping nothing of the old
section's keyword arguments) and ``loss.margin=5`` sets one argument. Values are parsed as YAML
scalars (``1e-3``, ``true``, ``null``, ``[1, 2]``).

Example:
    >>> from calibrant.config import apply_overrides
    >>> cfg = {"loss": {"name": "ce"}, "train": {"epochs": 10}}
    >>> apply_overrides(cfg, ["loss=mbls", "loss.margin=5", "train.epochs=2"])
    {'loss': {'name': 'mbls', 'margin': 5}, 'train': {'epochs': 2}}
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["load_config", "apply_overrides", "merge", "preset_names", "parse_value"]

COMPONENTS = ("data", "model", "loss", "optim", "sched", "calibrator")


def _yaml():
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - pyyaml is a declared dependency of the CLI
        raise ImportError("calibrant configs need PyYAML: pip install pyyaml") from e
    return yaml


def parse_value(text: str) -> Any:
    """Parse one override value as a YAML scalar/flow value."""
    return _yaml().safe_load(text) if text != "" else ""


def preset_names() -> list[str]:
    """Names of the configs shipped with calibrant (``calibrant/configs/*.yaml``)."""
    folder = resources.files("calibrant") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_config(name_or_path: str | Path) -> dict[str, Any]:
    """Load a shipped preset by name, or a YAML file by path.

    Raises:
        FileNotFoundError: naming the known presets when neither exists.
        ValueError: when the file does not hold a mapping.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text = path.read_text()
    else:
        shipped = resources.files("calibrant") / "configs" / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise FileNotFoundError(
                f"no config file or preset {str(name_or_path)!r}; "
                f"presets: {', '.join(preset_names())}"
            )
        text = shipped.read_text()
    cfg = _yaml().safe_load(text) or {}
    if not isinstance(cfg, dict):
        raise ValueError(
            f"config {str(name_or_path)!r} must hold a mapping, got {type(cfg).__name__}"
        )
    base = cfg.pop("base", None)
    return merge(load_config(base), cfg) if base else cfg


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

    Raises:
        ValueError: for an override without ``=`` or that descends into a non-mapping.
    """
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value or section.key=value")
        key, text = item.split("=", 1)
        value = parse_value(text)
        parts = key.strip().split(".")
        if len(parts) == 1 and parts[0] in COMPONENTS and not isinstance(value, dict):
            cfg[parts[0]] = {"name": value}
            continue
        node = cfg
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return cfg

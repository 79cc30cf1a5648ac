"""The schema of a run config: every key and value is checked before anything is written or run.

A run config (see :mod:`calibrant.config`) has two kinds of sections:

- **component sections** (``data``, ``model``, ``loss``, ``optim``, ``sched``): ``name`` picks a
  registry entry and the other keys are its factory's keyword arguments. The accepted keys are
  read from the factory's signature, following ``**kwargs`` into the callables the factory
  forwards them to (:func:`factory_keywords`), so that a new factory argument needs no schema
  change. Simple annotations (``int``, ``float``, ``bool``, ``str``, their ``| None``) also
  type-check the values.
- **plain sections** (``train``, ``eval``): a fixed table of keys, each with a typed
  :class:`Spec` (:data:`TRAIN_KEYS`, :data:`EVAL_KEYS`). A new key is one entry there, e.g.
  ``TRAIN_KEYS["my_option"] = Bool(doc="what it does")``.

:func:`validate_config` raises :class:`ConfigError` (a ``ValueError``) naming the key, what was
expected and the closest valid key or name (:mod:`difflib`). The CLI turns it into exit code 2.

The package has three modules, each imported only by the ones after it:
:mod:`~calibrant.config_schema.specs` (the typed values of the plain sections and
:class:`ConfigError`), :mod:`~calibrant.config_schema.keywords` (which keyword arguments a
factory accepts) and :mod:`~calibrant.config_schema.sections` (the sections and the check).

Example:
    >>> from calibrant.config_schema import validate_config
    >>> cfg = {"data": {"name": "mulan_scene"}, "model": {"name": "mlp", "hiden": [4]},
    ...        "loss": {"name": "bce"}, "train": {"epochz": 1}}
    >>> validate_config(cfg)
    Traceback (most recent call last):
    ...
    calibrant.config_schema.ConfigError: unknown key 'model.hiden': ...; did you mean 'hidden'? ...
    >>> cfg["model"] = {"name": "mlp", "hidden": [4]}
    >>> validate_config(cfg)
    Traceback (most recent call last):
    ...
    calibrant.config_schema.ConfigError: unknown key 'train.epochz'; did you mean 'train.epochs'?...
    >>> cfg["train"] = {"epochs": 0}
    >>> validate_config(cfg)
    Traceback (most recent call last):
    ...
    calibrant.config_schema.ConfigError: train.epochs must be an integer >= 1, got 0
"""

from calibrant.config_schema.keywords import Keywords, factory_keywords
from calibrant.config_schema.sections import (
    DEFAULT_SELECT,
    EVAL_KEYS,
    SECTIONS,
    TRAIN_KEYS,
    Component,
    MetricList,
    describe_keys,
    labels,
    validate_config,
)
from calibrant.config_schema.specs import Bool, ConfigError, Float, Int, ListOf, Nullable, Spec, Str

__all__ = [
    "Bool",
    "Component",
    "ConfigError",
    "DEFAULT_SELECT",
    "EVAL_KEYS",
    "Float",
    "Int",
    "Keywords",
    "ListOf",
    "MetricList",
    "Nullable",
    "SECTIONS",
    "Spec",
    "Str",
    "TRAIN_KEYS",
    "describe_keys",
    "factory_keywords",
    "labels",
    "validate_config",
]

"""The sections of a run config (:data:`SECTIONS`) and :func:`validate_config`.

Part of :mod:`calibrant.config_schema`: the plain ``train``/``eval`` tables of :class:`Spec`
values, the component sections whose keys are their factory's arguments (read by
:func:`~calibrant.config_schema.keywords.factory_keywords`), and the check of a whole config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from calibrant.config_schema.keywords import Keywords, _kind_ok, _kinds_expected, factory_keywords
from calibrant.config_schema.specs import (
    Bool,
    ConfigError,
    Float,
    Int,
    ListOf,
    Nullable,
    Spec,
    Str,
    _did_you_mean,
    _type_name,
)
from calibrant.experiment import OPTIMIZERS, SCHEDULERS
from calibrant.registry import DATASETS, LOSSES, METRICS, MODELS, Registry
from calibrant.views import TwoViewObjective

__all__ = [
    "Component",
    "EVAL_KEYS",
    "MetricList",
    "SECTIONS",
    "TRAIN_KEYS",
    "describe_keys",
    "labels",
    "validate_config",
]


@dataclass(frozen=True)
class MetricList(Spec):
    """A list of metric specs ``{name, as?, pick?, **kwargs}`` (see ``build_metrics``).

    ``name`` is a registered metric; ``as`` its label (default: the name); ``pick`` keeps one
    entry of a dict-valued metric; the other keys are the metric's arguments.
    """

    doc: str = ""

    def _expected(self) -> str:
        return "a list of metric specs {name, as?, pick?, **arguments}"

    def _accepts(self, value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, Mapping) for v in value)

    def _check(self, key: str, value: Any) -> None:
        super()._check(key, value)
        labels: dict[str, int] = {}
        for i, spec in enumerate(value):
            where = f"{key}[{i}]"
            kwargs = dict(spec)
            label = kwargs.pop("as", None)
            pick = kwargs.pop("pick", None)
            for extra, v in (("as", label), ("pick", pick)):
                if v is not None and not isinstance(v, str):
                    raise ConfigError(f"{where}.{extra}", f"{where}.{extra} must be a string")
            name = _component_name(where, kwargs, METRICS.names(), "metric")
            keywords = factory_keywords(METRICS.get(name).factory)
            _check_arguments(where, f"metric {name!r}", kwargs, keywords)
            label = label or name
            if label in labels:
                raise ConfigError(
                    where,
                    f"{where}: the label {label!r} is already used by {key}[{labels[label]}]; "
                    "give one of them another label with 'as'",
                )
            labels[label] = i


def labels(specs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The labels of metric specs (``as``, else ``name``), as ``build_metrics`` names them."""
    return [str(s.get("as") or s.get("name")) for s in specs]


# ---------------------------------------------------------------------------- plain sections

TRAIN_KEYS: dict[str, Spec] = {
    "epochs": Int(min=1, doc="number of training epochs"),
    "batch_size": Int(min=1, doc="training batch size (per process under DDP)"),
    "seed": Int(min=0, max=2**31 - 1, doc="seeds data order, initialisation and views"),
    "workers": Int(min=0, doc="DataLoader worker processes"),
    "channels_last": Bool(doc="store the weights NHWC/NDHWC"),
    "amp": Nullable(Str(("none", "bf16", "fp16")), doc="autocast (default: bf16 on CUDA)"),
    "clip_grad": Nullable(Float(min=0, open_min=True), doc="gradient-norm clipping"),
    "checkpoint_every": Int(min=0, doc="also write last.pt every this many steps (0: epochs)"),
    "patience": Nullable(Int(min=1), doc="early stopping after this many epochs without gain"),
    "sync_batchnorm": Bool(doc="synchronise BatchNorm statistics across DDP processes"),
}
"""Keys of the ``train`` section (read by :func:`calibrant.experiment.train_run`)."""

EVAL_KEYS: dict[str, Spec] = {
    "select": Str(doc="label of the validation metric that selects the best checkpoint"),
    "select_mode": Str(("max", "min"), doc="whether a higher or a lower score is better"),
    "batch_size": Int(min=1, doc="evaluation batch size (slices per forward for volumes)"),
    "window": Nullable(ListOf(Int(min=1)), doc="sliding-window size for 3D volumes"),
    "val_metrics": MetricList(doc="metrics computed on the validation split every epoch"),
    "test_metrics": MetricList(doc="metrics of the final test evaluation"),
    "checkpoint": Str(("best", "last"), doc="the checkpoint tested after training"),
}
"""Keys of the ``eval`` section."""

DEFAULT_SELECT = "dice"  # train_run's default for eval.select


# ------------------------------------------------------------------------ component sections


@dataclass(frozen=True)
class Component:
    """A section whose ``name`` picks a factory and whose other keys are its arguments.

    Attributes:
        kind: what the name names, in messages ("dataset", "loss", ...).
        names: the valid names.
        keywords: ``name -> Keywords`` of its factory.
        reserved: keys calibrant sets itself, with the reason (a config cannot set them).
        extra: keys that are not factory arguments, checked by a function ``(key, value,
            keywords)``.
        required: whether a run config must have the section.
        nullable: whether the section may be missing a name (``sched``: no scheduler).
    """

    kind: str
    names: Callable[[], list[str]]
    keywords: Callable[[str], Keywords]
    reserved: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Callable[[str, Any, Keywords], None]] = field(default_factory=dict)
    required: bool = True


def _component_name(section: str, kwargs: dict[str, Any], known: list[str], kind: str) -> str:
    """Pop and check ``name`` of a component section."""
    if "name" not in kwargs:
        raise ConfigError(
            f"{section}.name",
            f"{section} needs a 'name' (a registered {kind}; see `calibrant list`)",
        )
    name = kwargs.pop("name")
    if not isinstance(name, str) or name not in known:
        hint = _did_you_mean(str(name), known)
        raise ConfigError(
            f"{section}.name",
            f"unknown {kind} {name!r} ({section}.name){hint} Known: {', '.join(known)}",
        )
    return name


def _check_arguments(
    section: str,
    what: str,
    kwargs: Mapping[str, Any],
    keywords: Keywords,
    reserved: Mapping[str, str] | None = None,
    extra: Iterable[str] = (),
) -> None:
    """Check the arguments ``kwargs`` of a factory (``what``, e.g. "loss 'crac'")."""
    reserved = reserved or {}
    valid = sorted(k for k in keywords.params if k not in reserved)
    for key, value in kwargs.items():
        path = f"{section}.{key}"
        if key in reserved:
            raise ConfigError(path, f"{path} cannot be set: {reserved[key]}")
        if key in extra:
            continue
        if not isinstance(key, str) or key.startswith("_"):
            raise ConfigError(path, f"unknown key {path!r}: {what} takes no argument {key!r}")
        if key not in keywords.params:
            if keywords.open:
                continue  # the factory passes **kwargs where calibrant cannot follow them
            hint = _did_you_mean(key, [*valid, *extra])
            listed = ", ".join([*valid, *extra]) or "none"
            raise ConfigError(
                path,
                f"unknown key {path!r}: {what} takes no argument {key!r}{hint} "
                f"Its arguments: {listed}",
            )
        kinds = keywords.params[key]
        if kinds is not None and not _kind_ok(value, kinds):
            raise ConfigError(
                path,
                f"{path} must be {_kinds_expected(kinds)} (an argument of {what}), "
                f"got {value!r} ({_type_name(value)})",
            )


def _loss_names() -> list[str]:
    return LOSSES.names()


def _loss_keywords(name: str) -> Keywords:
    """As :func:`calibrant.experiment.build_criterion` builds it."""
    entry = LOSSES.get(name)
    keywords = factory_keywords(entry.factory)
    if entry.meta.get("inputs") == "two_view":  # wrapped by views.two_view_objective
        keywords = keywords | factory_keywords(TwoViewObjective, skip_positional=1)
    return keywords


def _registry_component(registry: Registry, kind: str, **options: Any) -> Component:
    return Component(
        kind=kind,
        names=registry.names,
        keywords=lambda name: factory_keywords(registry.get(name).factory),
        **options,
    )


def _per_split(key: str, value: Any, keywords: Keywords) -> None:
    """``data.train: {patch_size: ...}``: options of one split, dataset arguments too."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"{key} must be a mapping of dataset options for that split")
    _check_arguments(key, "the dataset", value, keywords, _DATA_RESERVED)


_DATA_RESERVED = {
    "root": "the data root comes from --data-root or $CALIBRANT_DATA",
    "split": "calibrant builds the train, val and test splits; per-split options go under "
    "data.train, data.val or data.test",
}

SECTIONS: dict[str, Component | dict[str, Spec]] = {
    "data": _registry_component(
        DATASETS,
        "dataset",
        reserved=_DATA_RESERVED,
        extra={"train": _per_split, "val": _per_split, "test": _per_split},
    ),
    "model": _registry_component(MODELS, "model"),
    "loss": Component(kind="loss", names=_loss_names, keywords=_loss_keywords),
    "optim": Component(
        kind="optimizer",
        names=lambda: sorted(OPTIMIZERS),
        keywords=lambda name: factory_keywords(OPTIMIZERS[name], skip_positional=1),
        required=False,
    ),
    "sched": Component(
        kind="scheduler",
        names=lambda: [*sorted(SCHEDULERS), "none"],
        keywords=lambda name: (
            Keywords() if name == "none" else factory_keywords(SCHEDULERS[name], skip_positional=2)
        ),
        required=False,
    ),
    "train": TRAIN_KEYS,
    "eval": EVAL_KEYS,
}
"""Every section of a run config: a :class:`Component` or a table of keys to :class:`Spec`."""

_NOT_SECTIONS = {
    "calibrator": "a run config has no calibrator section: fit one after training with "
    "`calibrant calibrate RUN --method NAME` (see `calibrant list calibrators`)",
    "base": "'base' is only read at the top of a config file",
}


def describe_keys() -> list[str]:
    """One line per key of the plain sections: ``train.epochs  an integer >= 1  (what it does)``.

    Example:
        >>> next(line for line in describe_keys() if line.startswith("train.epochs"))
        'train.epochs            an integer >= 1 -- number of training epochs'
    """
    keys = {
        f"{section}.{key}": spec
        for section, schema in SECTIONS.items()
        if not isinstance(schema, Component)
        for key, spec in schema.items()
    }
    width = max(map(len, keys))
    lines = []
    for key, spec in keys.items():
        doc = f" -- {spec.doc}" if spec.doc else ""
        lines.append(f"{key:{width}s}  {spec.expected()}{doc}")
    components = ", ".join(s for s, c in SECTIONS.items() if isinstance(c, Component))
    lines.append(
        f"{components}: 'name' (a registered entry, see `calibrant list`) and the arguments of "
        "its factory"
    )
    return lines


# ---------------------------------------------------------------------------------- validate


def validate_config(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    """Check every section, key and value of a run config; return it unchanged.

    Raises:
        ConfigError: naming the first wrong key, what it should be and the closest valid key.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError("", f"a config must be a mapping, got {_type_name(cfg)}")
    for section, body in cfg.items():
        if section not in SECTIONS:
            if section in _NOT_SECTIONS:
                raise ConfigError(str(section), _NOT_SECTIONS[section])
            hint = _did_you_mean(str(section), SECTIONS)
            raise ConfigError(
                str(section),
                f"unknown section {section!r}{hint} Sections: {', '.join(SECTIONS)}",
            )
        schema = SECTIONS[section]
        if isinstance(schema, Component):
            _validate_component(section, schema, body)
        else:
            _validate_plain(section, schema, body)
    for section, schema in SECTIONS.items():
        if isinstance(schema, Component) and schema.required and section not in cfg:
            required = [s for s, c in SECTIONS.items() if isinstance(c, Component) and c.required]
            raise ConfigError(
                section, f"missing section {section!r}; a run config needs {', '.join(required)}"
            )
    _validate_selection(cfg.get("eval") or {})
    return cfg


def _validate_component(section: str, schema: Component, body: Any) -> None:
    if not isinstance(body, Mapping):
        raise ConfigError(
            section,
            f"{section} must be a mapping with a 'name', got {body!r} "
            f"(use {section}=NAME or {section}.KEY=VALUE)",
        )
    kwargs = dict(body)
    name = _component_name(section, kwargs, schema.names(), schema.kind)
    keywords = schema.keywords(name)
    _check_arguments(
        section, f"{schema.kind} {name!r}", kwargs, keywords, schema.reserved, schema.extra
    )
    for key, check in schema.extra.items():
        if key in kwargs:
            check(f"{section}.{key}", kwargs[key], keywords)


def _validate_plain(section: str, schema: Mapping[str, Spec], body: Any) -> None:
    if body is None:
        return
    if not isinstance(body, Mapping):
        raise ConfigError(section, f"{section} must be a mapping of keys, got {body!r}")
    for key, value in body.items():
        path = f"{section}.{key}"
        if key not in schema:
            hint = _did_you_mean(str(key), schema, prefix=f"{section}.")
            raise ConfigError(
                path,
                f"unknown key {path!r}{hint} Keys of {section}: {', '.join(sorted(schema))}",
            )
        schema[key].check(path, value)


def _validate_selection(eval_cfg: Mapping[str, Any]) -> None:
    """``eval.select`` must name a validation metric (the engine reads ``val[select]``)."""
    select = eval_cfg.get("select", DEFAULT_SELECT)
    names = labels(eval_cfg.get("val_metrics") or [])
    if select not in names:
        key = "eval.select"
        if not names:
            raise ConfigError(
                "eval.val_metrics",
                f"eval.val_metrics is empty, but the best checkpoint is selected on the "
                f"validation metric {select!r} (eval.select); add it to eval.val_metrics",
            )
        raise ConfigError(
            key,
            f"eval.select {select!r} is not a validation metric{_did_you_mean(select, names)} "
            f"Labels of eval.val_metrics: {', '.join(names)}",
        )

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

from __future__ import annotations

import ast
import builtins
import difflib
import functools
import importlib
import inspect
import linecache
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Bool",
    "ConfigError",
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
    "validate_config",
]


class ConfigError(ValueError):
    """A config key or value that calibrant cannot use; ``key`` is its dotted path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _did_you_mean(name: str, known: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, sorted(set(known)), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(prefix + c) for c in close)}?" if close else "."


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ------------------------------------------------------------------------------ value specs


class Spec:
    """A typed value of a plain section; ``check`` raises :class:`ConfigError` naming ``key``."""

    doc: str = ""

    def expected(self) -> str:
        """What the value must be, in words ("an integer >= 1")."""
        return self._expected()

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is valid."""
        return self._accepts(value)

    def check(self, key: str, value: Any) -> None:
        """Raise :class:`ConfigError` naming ``key`` unless ``value`` is valid."""
        self._check(key, value)

    def _expected(self) -> str:
        raise NotImplementedError

    def _accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def _check(self, key: str, value: Any) -> None:
        if not self.accepts(value):
            raise ConfigError(key, f"{key} must be {self.expected()}, got {value!r}")


def _range(lo: Any, hi: Any, lo_open: bool = False) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"<= {hi}")
    return (" " + " and ".join(parts)) if parts else ""


@dataclass(frozen=True)
class Int(Spec):
    """An integer (not a bool) in ``[min, max]``."""

    min: int | None = None
    max: int | None = None
    doc: str = ""

    def _expected(self) -> str:
        return "an integer" + _range(self.min, self.max)

    def _accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


@dataclass(frozen=True)
class Float(Spec):
    """A real number (an int is accepted) in ``[min, max]`` (``(min, max]`` with ``open_min``)."""

    min: float | None = None
    max: float | None = None
    open_min: bool = False
    doc: str = ""

    def _expected(self) -> str:
        return "a number" + _range(self.min, self.max, self.open_min)

    def _accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if value != value:  # NaN
            return False
        if self.min is not None and (value <= self.min if self.open_min else value < self.min):
            return False
        return self.max is None or value <= self.max


@dataclass(frozen=True)
class Bool(Spec):
    """``true`` or ``false``."""

    doc: str = ""

    def _expected(self) -> str:
        return "true or false"

    def _accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class Str(Spec):
    """A string, optionally one of ``choices``."""

    choices: tuple[str, ...] | None = None
    doc: str = ""

    def _expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return "a string"

    def _accepts(self, value: Any) -> bool:
        return isinstance(value, str) and (self.choices is None or value in self.choices)

    def _check(self, key: str, value: Any) -> None:
        if isinstance(value, str) and self.choices and value not in self.choices:
            hint = _did_you_mean(value, self.choices)
            raise ConfigError(key, f"{key} must be {self.expected()}, got {value!r}{hint}")
        super()._check(key, value)


@dataclass(frozen=True)
class Nullable(Spec):
    """``null`` or a value of ``inner``."""

    inner: Spec
    doc: str = ""

    def _expected(self) -> str:
        return f"{self.inner.expected()} or null"

    def _accepts(self, value: Any) -> bool:
        return value is None or self.inner.accepts(value)

    def _check(self, key: str, value: Any) -> None:
        if value is not None:
            try:
                self.inner.check(key, value)
            except ConfigError:
                super()._check(key, value)


@dataclass(frozen=True)
class ListOf(Spec):
    """A list of values of ``inner``, of length ``length`` when given."""

    inner: Spec
    length: int | None = None
    doc: str = ""

    def _expected(self) -> str:
        n = f"{self.length} " if self.length is not None else ""
        return f"a list of {n}values, each {self.inner.expected()}"

    def _accepts(self, value: Any) -> bool:
        return (
            isinstance(value, list)
            and (self.length is None or len(value) == self.length)
            and all(self.inner.accepts(v) for v in value)
        )


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
        from calibrant.registry import METRICS

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


# ----------------------------------------------------------- factory keyword introspection


@dataclass(frozen=True)
class Keywords:
    """The keyword arguments a factory accepts.

    Attributes:
        params: name -> accepted simple value types (``{"int", "float", "bool", "str",
            "none"}``), or ``None`` when the type is not checked.
        positional: names that can be passed by position, in order.
        open: some ``**kwargs`` could not be followed, so other names may be accepted too.
    """

    params: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    positional: tuple[str, ...] = ()
    open: bool = False

    def __or__(self, other: Keywords) -> Keywords:
        params = dict(self.params)
        for name, kinds in other.params.items():
            params[name] = kinds if name not in params else _merge_kinds(params[name], kinds)
        return Keywords(params, self.positional, self.open or other.open)

    def without(self, names: Iterable[str] = (), positional: int = 0) -> Keywords:
        """Drop ``names`` and the first ``positional`` positional parameters (bound by a call)."""
        drop = set(names) | set(self.positional[:positional])
        params = {k: v for k, v in self.params.items() if k not in drop}
        return Keywords(params, tuple(p for p in self.positional if p not in drop), self.open)


def _merge_kinds(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    return a if a == b else None  # the same name with different types: not checked


_SIMPLE = {"int": "int", "float": "float", "bool": "bool", "str": "str", "None": "none"}
_SIMPLE["NoneType"] = "none"
_NOT_YAML = {"Tensor", "torch.Tensor", "Path", "os.PathLike", "PathLike"}  # never in a config


def _annotation_names(annotation: Any) -> list[str] | None:
    """Names of a union's members (``"float | None"`` -> ``["float", "None"]``), else None."""
    if isinstance(annotation, str):
        text = annotation.strip()
        for wrapper, extra in (("Optional[", ["None"]), ("typing.Optional[", ["None"])):
            if text.startswith(wrapper) and text.endswith("]"):
                inner = _annotation_names(text[len(wrapper) : -1])
                return None if inner is None else inner + extra
        for wrapper in ("Union[", "typing.Union["):
            if text.startswith(wrapper) and text.endswith("]"):
                text = text[len(wrapper) : -1].replace(",", "|")
        parts = [p.strip() for p in text.split("|")]
        if any(not p or "[" in p or "]" in p for p in parts):
            return None
        return parts
    if annotation is None or annotation is type(None):
        return ["None"]
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        names = [_annotation_names(a) for a in typing.get_args(annotation)]
        return None if any(n is None for n in names) else [x for n in names for x in n]
    if isinstance(annotation, type):
        if annotation.__name__ in _SIMPLE:
            return [annotation.__name__]
        return ["Tensor"] if annotation.__name__ == "Tensor" else None
    return None


def _kinds(param: inspect.Parameter) -> frozenset[str] | None:
    """Simple value types a parameter accepts, from its annotation and default; None: any."""
    if param.annotation is inspect.Parameter.empty:
        return None
    names = _annotation_names(param.annotation)
    if names is None:
        return None
    kinds = set()
    for name in names:
        if name in _NOT_YAML:
            continue
        if name not in _SIMPLE:
            return None
        kinds.add(_SIMPLE[name])
    if not kinds:
        return None
    if param.default is None:
        kinds.add("none")
    return frozenset(kinds)


def _kind_ok(value: Any, kinds: frozenset[str]) -> bool:
    if value is None:
        return "none" in kinds
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return "int" in kinds or "float" in kinds
    if isinstance(value, float):
        return "float" in kinds
    if isinstance(value, str):
        return "str" in kinds
    return False  # a list or a mapping where a scalar is annotated


_KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "none": "null",
}


def _kinds_expected(kinds: frozenset[str]) -> str:
    order = [k for k in ("int", "float", "bool", "str", "none") if k in kinds]
    if "float" in order and "int" in order:
        order.remove("int")
    return " or ".join(_KIND_WORDS[k] for k in order)


@functools.cache
def _module_index(filename: str) -> dict[int, list[ast.AST]] | None:
    """Function and lambda nodes of a source file by the first line of their code object."""
    source = "".join(linecache.getlines(filename))
    if not source:
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    index: dict[int, list[ast.AST]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([d.lineno for d in node.decorator_list] + [node.lineno])
            index.setdefault(first, []).append(node)
        elif isinstance(node, ast.Lambda):
            index.setdefault(node.lineno, []).append(node)
    return index


def _source_node(func: types.FunctionType) -> ast.AST | None:
    code = func.__code__
    index = _module_index(code.co_filename)
    if not index:
        return None
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    for node in index.get(code.co_firstlineno, []):
        name = node.name if not isinstance(node, ast.Lambda) else "<lambda>"
        a = node.args
        args = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
        if name == code.co_name and tuple(args) == names:
            return node
    return None


def _refs(expr: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(expr))


def _local_imports(node: ast.AST) -> dict[str, tuple[str, str | None]]:
    """Names bound by ``import``/``from ... import`` statements inside a function."""
    out: dict[str, tuple[str, str | None]] = {}
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.module and not n.level:
            for alias in n.names:
                out[alias.asname or alias.name] = (n.module, alias.name)
        elif isinstance(n, ast.Import):
            for alias in n.names:
                if alias.asname:
                    out[alias.asname] = (alias.name, None)
    return out


def _lookup(name: str, func: types.FunctionType) -> Any:
    code = func.__code__
    if name in code.co_freevars and func.__closure__:
        cell = func.__closure__[code.co_freevars.index(name)]
        try:
            return cell.cell_contents
        except ValueError:
            return None
    if name in func.__globals__:
        return func.__globals__[name]
    node = _source_node(func)
    imported = _local_imports(node).get(name) if node is not None else None
    if imported is not None:
        module, attr = imported
        try:
            obj = importlib.import_module(module)
        except ImportError:
            return None
        return obj if attr is None else getattr(obj, attr, None)
    return getattr(builtins, name, None)


def _resolve(expr: ast.AST, func: types.FunctionType, owner: type | None) -> Any:
    """The object a call's ``func`` expression names, or None when it cannot be known."""
    if isinstance(expr, ast.Name):
        return _lookup(expr.id, func)
    if isinstance(expr, ast.Attribute):
        value = expr.value
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id == "super"
            and expr.attr == "__init__"
            and owner is not None
        ):
            return _SuperInit(owner)
        base = _resolve(value, func, owner)
        if isinstance(base, type):  # Class.method(self, ...): unbound, self passed explicitly
            for klass in base.__mro__:
                if expr.attr in klass.__dict__:
                    attr = klass.__dict__[expr.attr]
                    if isinstance(attr, types.FunctionType):
                        return _Unbound(attr, klass)
                    break
        return None if base is None else getattr(base, expr.attr, None)
    return None


@dataclass(frozen=True)
class _Unbound:
    """A method ``func`` of ``owner`` called through the class, with ``self`` passed."""

    func: types.FunctionType
    owner: type


@dataclass(frozen=True)
class _SuperInit:
    """``super().__init__`` inside a method of ``owner``."""

    owner: type


def _init_of(cls: type, after: type | None = None) -> tuple[Any, type]:
    """The ``__init__`` a call of ``cls`` (or ``super().__init__`` in ``after``) runs."""
    mro = cls.__mro__
    start = mro.index(after) + 1 if after is not None else 0
    for klass in mro[start:]:
        if "__init__" in klass.__dict__:
            return klass.__dict__["__init__"], klass
    return object.__init__, object


_MEMO: dict[Any, Keywords] = {}
_BUSY = object()


def factory_keywords(factory: Callable[..., Any], *, skip_positional: int = 0) -> Keywords:
    """Keyword arguments ``factory`` accepts, following ``**kwargs`` where they are forwarded.

    ``**kwargs`` is followed through the calls in the factory's source that pass it on (``f(**kw)``,
    or a dict derived from it, or ``kw`` itself to a helper function), including
    ``super().__init__``; keys read with ``kw.pop("k")``/``kw.get("k")`` count as accepted.
    Parameters whose names start with ``_`` are private and never accepted.

    Args:
        factory: a function, class, lambda or ``functools.partial``.
        skip_positional: number of leading positional parameters the caller always passes
            (``params`` of an optimiser), which a config cannot set.

    Returns:
        :class:`Keywords`; ``open`` when some ``**kwargs`` went where they cannot be followed.

    Example:
        >>> from calibrant.registry import ALM_PRESETS
        >>> kw = factory_keywords(ALM_PRESETS.get("cals_alm").factory)
        >>> "margin" in kw.params, "rho_init" in kw.params, kw.open
        (True, True, False)
        >>> "margin" in factory_keywords(ALM_PRESETS.get("crac").factory).params
        False
    """
    return _callable_keywords(factory).without(positional=skip_positional)


def _callable_keywords(obj: Any, owner: type | None = None) -> Keywords:
    key = (obj, owner)
    try:
        cached = _MEMO.get(key)
    except TypeError:  # unhashable callable
        cached, key = None, None
    if cached is _BUSY:  # a cycle: the outer call collects what this one would
        return Keywords()
    if cached is not None:
        return cached
    if key is not None:
        _MEMO[key] = _BUSY  # type: ignore[assignment]
    try:
        result = _compute_keywords(obj, owner)
    finally:
        if key is not None:
            _MEMO.pop(key, None)
    if key is not None:
        _MEMO[key] = result
    return result


def _compute_keywords(obj: Any, owner: type | None) -> Keywords:
    if isinstance(obj, _SuperInit):
        init, klass = _init_of(obj.owner, after=obj.owner)
        return _compute_keywords(init, klass) if klass is not object else Keywords()
    if isinstance(obj, _Unbound):
        keywords = _compute_keywords(obj.func, obj.owner)
        return Keywords(keywords.params, ("self", *keywords.positional), keywords.open)
    if isinstance(obj, functools.partial):
        inner = _callable_keywords(obj.func)
        return inner.without(positional=len(obj.args))
    if isinstance(obj, type):
        init, klass = _init_of(obj)
        if klass is object:
            return Keywords()
        return _compute_keywords(init, klass)
    func = getattr(obj, "__func__", obj)  # a bound method
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return Keywords(open=True)
    params = list(sig.parameters.values())
    if owner is not None and params:  # an __init__: drop self
        params = params[1:]
    elif inspect.ismethod(obj) and params:
        params = params[1:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = {p.name: _kinds(p) for p in params if p.kind in kinds and not p.name.startswith("_")}
    positional = tuple(
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )
    result = Keywords(named, positional)
    var_kw = [p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    if var_kw:
        if not isinstance(func, types.FunctionType):
            return Keywords(named, positional, open=True)
        result = result | _forwarded(func, owner, {var_kw[0]})
    return result


def _forwarded(func: types.FunctionType, owner: type | None, dict_names: set[str]) -> Keywords:
    """Keys the dicts ``dict_names`` of ``func`` can hold: where they go and what is read."""
    node = _source_node(func)
    if node is None:
        return Keywords(open=True)
    names = set(dict_names)
    body = node.body if isinstance(node.body, list) else [node.body]
    nodes = [n for stmt in body for n in ast.walk(stmt)]
    # (targets, value) pairs: `x = value` and `x.update(value)` (x then holds the dict's keys)
    flows = [
        (n.targets if isinstance(n, ast.Assign) else [n.target], n.value)
        for n in nodes
        if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None
    ]
    flows += [
        ([n.func.value], n)
        for n in nodes
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "update"
        and isinstance(n.func.value, ast.Name)
    ]
    changed = True
    while changed:  # names that receive the keys of one of the dicts
        changed = False
        for targets, value in flows:
            if not _refs(value, names):
                continue
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name) and n.id not in names:
                        names.add(n.id)
                        changed = True
    out = Keywords()
    for n in nodes:
        if isinstance(n, ast.Call):
            out = out | _call_keywords(n, func, owner, names)
        elif isinstance(n, (ast.DictComp, ast.ListComp, ast.SetComp, ast.GeneratorExp)):
            out = out | _comprehension_keys(n, names)
    return out


def _call_keywords(
    call: ast.Call, func: types.FunctionType, owner: type | None, names: set[str]
) -> Keywords:
    f = call.func
    # kw.pop("key") / kw.get("key") / kw.setdefault("key", ...): "key" is accepted
    if (
        isinstance(f, ast.Attribute)
        and f.attr in ("pop", "get", "setdefault")
        and isinstance(f.value, ast.Name)
        and f.value.id in names
    ):
        if (
            call.args
            and isinstance(call.args[0], ast.Constant)
            and isinstance(call.args[0].value, str)
        ):
            return Keywords({call.args[0].value: None})
        return Keywords()
    out = Keywords()
    if any(k.arg is None and _refs(k.value, names) for k in call.keywords):  # f(**kw)
        callee = _resolve(f, func, owner)
        if callee is None:
            return Keywords(open=True)
        explicit = [k.arg for k in call.keywords if k.arg is not None]
        starred = any(isinstance(a, ast.Starred) for a in call.args)
        sub = _callable_keywords(callee)
        out = out | sub.without(explicit, 0 if starred else len(call.args))
    for i, arg in enumerate(call.args):  # helper(kw, ...): follow the dict into the helper
        if isinstance(arg, ast.Name) and arg.id in names:
            callee = _resolve(f, func, owner)
            helper = getattr(callee, "__func__", callee)
            if not isinstance(helper, types.FunctionType):
                continue  # dict(kw), len(kw), ...: read, not forwarded
            args = inspect.signature(helper).parameters
            positional = [
                p.name
                for p in args.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            if inspect.ismethod(callee):
                positional = positional[1:]
            if i < len(positional):
                out = out | _forwarded(helper, None, {positional[i]})
    return out


def _comprehension_keys(node: ast.AST, names: set[str]) -> Keywords:
    """``{k: kw.pop(k) for k in ("a", "b")}``: "a" and "b" are accepted."""
    keys: dict[str, None] = {}
    for gen in node.generators:  # type: ignore[attr-defined]
        if not (isinstance(gen.target, ast.Name) and isinstance(gen.iter, (ast.Tuple, ast.List))):
            continue
        consts = [e.value for e in gen.iter.elts if isinstance(e, ast.Constant)]
        if not consts or not all(isinstance(c, str) for c in consts):
            continue
        reads = any(
            isinstance(c, ast.Call)
            and isinstance(c.func, ast.Attribute)
            and c.func.attr in ("pop", "get")
            and isinstance(c.func.value, ast.Name)
            and c.func.value.id in names
            and c.args
            and isinstance(c.args[0], ast.Name)
            and c.args[0].id == gen.target.id
            for c in ast.walk(node)
        )
        if reads:
            keys.update(dict.fromkeys(consts))
    return Keywords(keys)


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
    from calibrant.registry import ALM_PRESETS, LOSSES

    return sorted({*LOSSES.names(), *ALM_PRESETS.names()})


def _loss_keywords(name: str) -> Keywords:
    """As :func:`calibrant.experiment.build_criterion` builds it: LOSSES first, then ALM_PRESETS."""
    from calibrant.registry import ALM_PRESETS, LOSSES

    if name in LOSSES:
        entry = LOSSES.get(name)
        keywords = factory_keywords(entry.factory)
        if entry.meta.get("inputs") == "two_view":  # wrapped by views.two_view_objective
            from calibrant.views import TwoViewObjective

            keywords = keywords | factory_keywords(TwoViewObjective, skip_positional=1)
        return keywords
    return factory_keywords(ALM_PRESETS.get(name).factory)


def _registry_component(registry_name: str, kind: str, **options: Any) -> Component:
    def registry():
        from calibrant import registry as r

        return getattr(r, registry_name)

    return Component(
        kind=kind,
        names=lambda: registry().names(),
        keywords=lambda name: factory_keywords(registry().get(name).factory),
        **options,
    )


def _optimizers() -> dict[str, Any]:
    from calibrant.experiment import OPTIMIZERS

    return OPTIMIZERS


def _schedulers() -> dict[str, Any]:
    from calibrant.experiment import SCHEDULERS

    return SCHEDULERS


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
        "DATASETS",
        "dataset",
        reserved=_DATA_RESERVED,
        extra={"train": _per_split, "val": _per_split, "test": _per_split},
    ),
    "model": _registry_component("MODELS", "model"),
    "loss": Component(kind="loss", names=_loss_names, keywords=_loss_keywords),
    "optim": Component(
        kind="optimizer",
        names=lambda: sorted(_optimizers()),
        keywords=lambda name: factory_keywords(_optimizers()[name], skip_positional=1),
        required=False,
    ),
    "sched": Component(
        kind="scheduler",
        names=lambda: [*sorted(_schedulers()), "none"],
        keywords=lambda name: (
            Keywords()
            if name == "none"
            else factory_keywords(_schedulers()[name], skip_positional=2)
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

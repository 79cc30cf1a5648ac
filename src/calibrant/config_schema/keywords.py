"""Which keyword arguments a factory accepts: :func:`factory_keywords` and :class:`Keywords`.

Part of :mod:`calibrant.config_schema`. The accepted names are read from the factory's
signature; a ``**kwargs`` parameter is followed through the factory's source (:mod:`ast`) into
the callables it is forwarded to, so that a new factory argument needs no schema change. Simple
annotations (``int``, ``float``, ``bool``, ``str`` and their ``| None``) give the value types
that :func:`_kind_ok` checks.

Example:
    >>> from calibrant.config_schema.specs import Int
    >>> kw = factory_keywords(Int)
    >>> sorted(kw.params), sorted(kw.params["min"]), kw.open
    (['doc', 'max', 'min'], ['int', 'none'], False)
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import inspect
import linecache
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Keywords", "factory_keywords"]


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
        >>> from calibrant.registry import LOSSES
        >>> kw = factory_keywords(LOSSES.get("cals_alm").factory)
        >>> "margin" in kw.params, "rho_init" in kw.params, kw.open
        (True, True, False)
        >>> "margin" in factory_keywords(LOSSES.get("crac").factory).params
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

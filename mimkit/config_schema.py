"""Turn plain dicts (from YAML or ``key=value`` overrides) into typed dataclasses, or say exactly what is wrong.

Every error names the dotted field and what it accepts, e.g.
``config field 'train.batch_size': expected an integer, got 'abc'``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, TypeVar, Union

import yaml

from mimkit.errors import MimkitError

T = TypeVar("T")


class ConfigError(MimkitError, ValueError):
    """A configuration value or key that cannot be accepted; the message names the field."""


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = _describe(args[0]) if args else "values"
        if origin is tuple and Ellipsis not in typing.get_args(tp):
            return f"a list of {len(args)} ({inner})"
        return f"a list of ({inner})"
    if origin is dict:
        return "a mapping"
    return {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        type(None): "null",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, field: str) -> Any:
    origin = typing.get_origin(tp)
    fail = ConfigError(f"config field '{field}': expected {_describe(tp)}, got {value!r}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, field)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise fail
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, field)
            except ConfigError:
                continue
        raise fail
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail
        args = typing.get_args(tp)
        if origin is tuple and args and Ellipsis not in args:
            if len(value) != len(args):
                raise fail
            return tuple(_convert(v, a, f"{field}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        inner = args[0] if args else Any
        items = [_convert(v, inner, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise fail
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise fail from None
        raise fail
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail
    raise TypeError(f"unsupported config type {tp!r} for field '{field}'")


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    where = prefix or "<root>"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config field '{where}': expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config field '{name}'{hint}; allowed: {', '.join(sorted(fields))}")
        values[key] = _convert(value, hints[key], name)
    try:
        obj = cls(**values)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"config section '{where}': {err}") from err
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-container view of a config dataclass (tuples become lists), safe to dump as YAML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, returning a new dict."""
    result = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.epochs=10)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return result


def load_yaml(path: str) -> dict:
    """Read a YAML mapping, with a clear error for a missing file or a non-mapping document."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {path}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data

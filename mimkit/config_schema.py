"""Turn plain dicts (from YAML or ``key=value`` overrides) into typed dataclasses, or say exactly what is wrong.

Every error names the dotted field and what it accepts, e.g.
``config field 'train.batch_size': expected an integer, got 'abc'`` or
``config field 'optim.base_lr': must be above 0, got 0.0``.

A field's range is part of its type: ``Annotated[float, Bounds(...)]`` (the named types of
:mod:`mimkit.config_types`). :class:`Settings`, the base of every configuration dataclass, checks each field
against its range, and every float against being finite, when the dataclass is built, whether from YAML, from
overrides or directly in Python. YAML is read with a loader that refuses duplicate keys and bounds how far
anchors and aliases may expand a document.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml

from mimkit.errors import MimkitError

T = TypeVar("T")

MAX_CONFIG_BYTES = 1 << 20
"""Largest config file read (1 MiB; the biggest recipe is about 2 KiB)."""
MAX_CONFIG_NODES = 100_000
"""Most YAML values a document may expand to once aliases are resolved (the recipes have under 200)."""


class ConfigError(MimkitError, ValueError):
    """A configuration value or key that cannot be accepted; the message names the field."""


class FieldValueError(ValueError):
    """A value outside its field's range, raised while a configuration dataclass is built."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Bounds:
    """The range a number must lie in; ``None`` leaves that side open-ended."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        return self.high is None or not (value > self.high or (value == self.high and not self.high_inclusive))

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            opening, closing = "[" if self.low_inclusive else "(", "]" if self.high_inclusive else ")"
            return f"in {opening}{self.low}, {self.high}{closing}"
        if self.low is not None:
            return f"at least {self.low}" if self.low_inclusive else f"above {self.low}"
        if self.high is not None:
            return f"at most {self.high}" if self.high_inclusive else f"below {self.high}"
        return "finite"


def _strip_annotated(tp: Any) -> tuple[Any, Bounds | None]:
    if typing.get_origin(tp) is Annotated:
        inner, *extras = typing.get_args(tp)
        return inner, next((e for e in extras if isinstance(e, Bounds)), None)
    return tp, None


def _element_bounds(tp: Any) -> Bounds | None:
    """The range of a field's numbers: of the value itself, or of the items of a list/tuple, through ``| None``."""
    tp, bounds = _strip_annotated(tp)
    if bounds is not None:
        return bounds
    for arg in typing.get_args(tp):
        if arg is not Ellipsis and arg is not type(None):
            inner = _element_bounds(arg)
            if inner is not None:
                return inner
    return None


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _numbers(item)]
    return []


class Settings:
    """Base of mimkit's configuration dataclasses: checks every field against the range its type declares and
    every float against being finite. Subclasses that add checks call ``super().__post_init__()`` first."""

    def __post_init__(self) -> None:
        for name, tp in _field_types(type(self)).items():
            value = getattr(self, name)
            if isinstance(value, dict):
                continue
            bounds = _element_bounds(tp) or Bounds()
            for number in _numbers(value):
                if not bounds.admits(number):
                    raise FieldValueError(name, f"must be {bounds}, got {value!r}")


def _describe(tp: Any) -> str:
    tp, bounds = _strip_annotated(tp)
    if bounds is not None:
        return f"{_describe(tp)} {bounds}"
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
    tp, _ = _strip_annotated(tp)
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
    """Build dataclass ``cls`` from ``data``; unknown keys, wrong types and values out of range raise
    :class:`ConfigError`."""
    where = prefix or "<root>"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config field '{where}': expected a mapping of fields, got {data!r}")
    fields = _field_types(cls)
    values = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config field '{name}'{hint}; allowed: {', '.join(sorted(fields))}")
        values[key] = _convert(value, fields[key], name)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except FieldValueError as err:
        name = f"{prefix}.{err.field}" if prefix else err.field
        raise ConfigError(f"config field '{name}': {err.message}") from err
    except ValueError as err:
        raise ConfigError(f"config section '{prefix}': {err}" if prefix else f"config: {err}") from err


def to_dict(obj: Any) -> Any:
    """Plain-container view of a config dataclass (tuples become lists), safe to dump as YAML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise ConfigError(
                    f"duplicate key {key!r} at line {key_node.start_mark.line + 1}: a key may be given once "
                    "per section; remove one of them"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values ``node`` stands for once every alias is expanded (memoized per node, so a bomb costs little)."""
    if id(node) not in sizes:
        sizes[id(node)] = 1  # a node that (recursively) contains itself counts once
        children: list = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def parse_yaml(text: str, source: str) -> Any:
    """Parse a YAML document safely: no code, no duplicate keys, at most :data:`MAX_CONFIG_NODES` values after
    alias expansion. ``source`` names the text in errors (a file, or an override)."""
    try:
        loader = _StrictLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            if _expanded_size(node, {}) > MAX_CONFIG_NODES:
                raise ConfigError(
                    f"{source} expands to more than {MAX_CONFIG_NODES:,} values through YAML anchors and aliases; "
                    "write the config out without them"
                )
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {' '.join(str(err).split())}") from err
    except RecursionError as err:
        raise ConfigError(f"{source} nests too deeply to be a config") from err


def merged_sections(base: dict, update: dict) -> dict:
    """``base`` updated by ``update``, nested sections merged key by key (``teacher.weights=...`` keeps the
    teacher's other fields); a section set to something other than a mapping replaces it whole."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = merged_sections(merged[key], value)
        merged[key] = value
    return merged


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, returning a new dict."""
    result = copy.deepcopy(data)
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
        node[parts[-1]] = parse_yaml(raw, f"override '{item}'")
    return result


def load_yaml(path: str) -> dict:
    """Read a YAML mapping, with a clear error for a missing, unreadable, oversized or non-mapping file."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {path}") from err
    except IsADirectoryError as err:
        raise ConfigError(f"config file {path} is a folder; name a .yaml file") from err
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from err
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB; is it a config?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text") from err
    data = parse_yaml(text, f"config file {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data

"""Typed configs: dataclasses that validate themselves, built from YAML files and dotted overrides.

``load_config(MyConfig, "file.yaml", ["optim.lr=1e-4", "steps=200"])`` builds a nested dataclass from the
YAML mapping, applies ``key=value`` overrides (values parsed as YAML scalars), and refuses unknown keys
with a message that names the key and suggests the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is malformed or names an unknown key."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key '{where}{key}'{hint}; valid keys: {sorted(valid)}")


def _dataclass_of(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            if dataclasses.is_dataclass(a):
                return a
    return None


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclass fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix or '<root>'} must be a mapping, got {type(data).__name__}")
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            raise _unknown(key, list(types_), prefix)
        sub = _dataclass_of(types_[key])
        if sub is not None and isinstance(value, dict):
            # a section may define how it is built (e.g. the env section, whose keys depend on the env)
            build = getattr(sub, "from_mapping", None)
            value = build(value, f"{prefix}{key}.") if build else from_dict(sub, value, f"{prefix}{key}.")
        elif sub is not None and value is not None and not dataclasses.is_dataclass(value):
            raise ConfigError(f"config field '{prefix}{key}' is a section (a mapping of keys), got {value!r}")
        else:
            value = _coerce(value, types_[key], f"{prefix}{key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"config section {prefix or '<root>'}: {e}") from None


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Values of the declared type: '2e-4' (which YAML reads as a string) and ints become floats for float
    fields, lists become tuples of the declared length and element type, a ``Literal`` must be one of its
    values; anything else is an error naming the field."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config field {name!r} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config field {name!r} has the wrong type: {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config field {name!r} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
        if args and len(value) != len(args):
            raise ConfigError(f"config field {name!r} must be a list of {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args))) if args \
            else tuple(value)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config field {name!r} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict and not isinstance(value, dict):
        raise ConfigError(f"config field {name!r} must be a mapping, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config field {name!r} must be a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"config field {name!r} must be a number, got {value!r}") from None
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config field {name!r} must be an integer, got {value!r}")
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"config field {name!r} must be true or false, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"config field {name!r} must be a string, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain YAML/JSON-friendly data (tuples become lists)."""
    return plain(dataclasses.asdict(cfg))


def plain(x: Any) -> Any:
    """Nested dicts with tuples turned into lists (YAML-dumpable, and loadable with weights_only=True)."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [plain(v) for v in x]
    return x


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested mapping (values parsed as YAML scalars)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            reason = str(getattr(e, "problem", None) or e).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({reason}); quote it or fix the "
                              "brackets") from None
        node = data
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part; it must look like key.subkey=value")
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is not None and not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])!r} is {child!r}, not a section; "
                                  f"remove the override that set it")
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read ``path`` (YAML; optional), apply ``overrides`` and build ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {' '.join(str(e).split())}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {p} is not a text file") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must be a mapping of keys (key: value lines), got a "
                              f"{type(data).__name__}")
    return from_dict(cls, apply_overrides(data, overrides or []))


def check(cond: bool, field: str, value: Any, requirement: str) -> None:
    """Raise a ConfigError naming the field and the value it got."""
    if not cond:
        raise ConfigError(f"config field {field!r} {requirement}, got {value!r}")

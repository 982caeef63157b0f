"""Typed reading of study files: dataclasses in, one-line errors naming the field path out.

Hand-written because the job is small and the error text matters: every rejection names the field
path, the bad value and what is allowed. Numbers are coerced (PyYAML reads `5e-4` as a string),
so equal configs resolve to equal values and hence equal run ids.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import types
import typing
from typing import Any, Literal

from .errors import ConfigError
from .registry import Registry


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp, path: str) -> Any:
    """Check `value` against type hint `tp` (dataclass, list, dict, Literal, Optional, scalars)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, path)
            except ConfigError as e:
                errors.append(e)
        raise errors[-1]
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, f"{value!r} is not allowed; allowed: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
            value = [value]  # a single value where a list is expected: an axis with one entry
        return [coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        return {str(k): coerce(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(path, f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(path, f"expected a finite number, got {value!r}")
        if tp is int:
            if not number.is_integer():
                raise ConfigError(path, f"expected an integer, got {value!r}")
            return int(number)
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"schema: unsupported type {tp!r} at {path}")


def from_dict(cls, data: Any, path: str):
    """Build dataclass `cls` from a mapping, rejecting unknown keys and filling defaults."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path or "(top level)", f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}" if path else unknown[0],
                          f"unknown key; allowed: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            values[name] = coerce(data[name], hints[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(sub, "is required")
    return cls(**values)


def resolve_component(registry: Registry, spec: Any, path: str) -> dict:
    """`name` or `{name: ..., **params}` → `{name, **settings, **every param with its default}`.

    Parameters and their defaults are the registered entry's (`Registry.params`), so a new variant needs no
    schema edit; the registry's `settings` (e.g. a mixing probability) come first, with their defaults.
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(path, f"expected a name or a mapping with 'name', got {spec!r}")
    name = spec["name"]
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(f"{path}.name", registry.unknown_message(name))
    params = registry.params(name)
    hints = _type_hints(registry.get(name))
    resolved: dict[str, Any] = {"name": name}
    for key, default in registry.settings.items():
        resolved[key] = coerce(spec.get(key, default), type(default), f"{path}.{key}")
    for key, p in params.items():
        if key in spec:
            value = _coerce_like(spec[key], p, hints.get(key), f"{path}.{key}")
        elif p.default is inspect.Parameter.empty:
            raise ConfigError(f"{path}.{key}", f"is required by {registry.kind} {name!r}")
        else:
            value = _plain(p.default)
        if value is False and p.default is None:  # a flag added later as `bool | None = None` (off, and unset
            value = None                          # so no id changed): `false` says the same, so it is one run
        if value is not None or p.default is not None:  # an optional parameter left unset stays out: so adding
            resolved[key] = value                        # one to a component changes no run id
    unknown = [k for k in spec if k != "name" and k not in params and k not in registry.settings]
    if unknown:
        allowed = ", ".join(["name", *registry.settings, *params])
        raise ConfigError(f"{path}.{unknown[0]}", f"unknown parameter of {registry.kind} {name!r}; allowed: {allowed}")
    return resolved


def component_defaults(registry: Registry, name: str) -> dict[str, Any]:
    """Every parameter a study may give entry `name`, with its default (inspect.Parameter.empty: required)."""
    empty = inspect.Parameter.empty
    params = {key: p.default if p.default is empty else _plain(p.default)
              for key, p in registry.params(name).items()}
    return {**registry.settings, **params}


def _plain(value):
    """Tuples → lists so defaults compare equal to values read from YAML."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _type_hints(fn) -> dict:
    """A registered function's (or class constructor's) annotations as types, not strings."""
    try:
        return typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    except (NameError, TypeError):
        return {}


def _coerce_like(value, param: inspect.Parameter, hint, path: str):
    """Coerce by the annotation (sequences read as lists, like YAML's) where `coerce` knows it, else by the
    default's type."""
    if typing.get_origin(hint) in (collections.abc.Sequence, tuple) and typing.get_args(hint):
        hint = list[typing.get_args(hint)[0]]
    if hint is not None and hint is not Any:
        try:
            return _plain(coerce(value, hint, path))
        except TypeError:  # a type `coerce` does not read: fall back on the default's
            pass
    default = param.default
    if isinstance(default, (bool, int, float, str)) and default is not None:
        return coerce(value, type(default), path)
    return _plain(value)

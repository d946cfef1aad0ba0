"""Plain data <-> config dataclasses: `from_dict` builds one from TOML data, checking names and types
field by field (errors name the field); `to_dict` gives back TOML-ready data."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from fedpeer.errors import ConfigError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from plain TOML data, checking names and types field by field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{_join(where, unknown[0])} is not a known setting (known: {', '.join(sorted(fields))})"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: convert_value(hints[name], value, _join(where, name)) for name, value in data.items()}
    missing = [
        f.name
        for f in fields.values()
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{_join(where, missing[0])} is required")
    return cls(**kwargs)


def convert_value(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(convert_value(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported in config")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (
        not isinstance(value, tp) or (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> TOML-ready dict (tuples become lists)."""
    out = dataclasses.asdict(obj)
    return _lists(out)


def _lists(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_lists(x) for x in v]
    return v

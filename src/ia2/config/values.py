"""Setting values from YAML or the command line as their declared types, or one line naming the setting."""

from __future__ import annotations

import types
import typing
from typing import Any

from ia2.config import adapter_kinds
from ia2.errors import IA2Error


class Quoted(str):
    """Text a YAML file quoted: never read as a number, so that `lr: "0.001"` is an error, not a silent cast."""


def _is_tuple(kind: Any) -> bool:
    return typing.get_origin(kind) is tuple


def _optional(kind: Any) -> tuple[Any, bool]:
    """The type inside `X | None` (`X | Y` kept as a union, tried in order), and whether None is allowed."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        return inner[0] if len(inner) == 1 else tuple(inner), type(None) in typing.get_args(kind)
    return kind, False


def coerce(declared: Any, value: Any, shown: str) -> Any:
    """A value from YAML or the command line as the setting's `declared` type (comma-separated text for a list on
    the command line), or one line naming the setting."""
    kind, nullable = _optional(declared)
    if value is None:
        if nullable:
            return None
        raise IA2Error(f"{shown} must not be empty")
    if kind is dict:
        try:
            return adapter_kinds.normalise(value)
        except IA2Error as exc:
            raise IA2Error(f"{shown}: {exc}") from None
    if _is_tuple(kind):
        item = typing.get_args(kind)[0]
        parts = [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value
        if not isinstance(parts, (list, tuple)):
            raise IA2Error(f"{shown} must be a list, got {value!r}")
        return tuple(_scalar(item, p, shown) for p in parts)
    if isinstance(kind, tuple):
        return _first(kind, value, shown)
    return _scalar(kind, value, shown)


def _first(kinds: tuple[type, ...], value: Any, shown: str) -> Any:
    """The value as the first of `kinds` it is (an int before a path, say)."""
    for kind in kinds[:-1]:
        try:
            return _scalar(kind, value, shown)
        except IA2Error:
            continue
    return _scalar(kinds[-1], value, shown)


def _scalar(kind: type, value: Any, shown: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise IA2Error(f"{shown} must be true or false, got {value!r}")
    if kind is str:
        if isinstance(value, (dict, list, tuple)):
            raise IA2Error(f"{shown} must be text, got {value!r}")
        return str(value)
    if isinstance(value, Quoted):
        noun = "an integer" if kind is int else "a number"
        raise IA2Error(f"{shown} must be {noun}, got the quoted text {value!r}: drop the quotes")
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        noun = "an integer" if kind is int else "a number"
        raise IA2Error(f"{shown} must be {noun}, got {value!r}") from None

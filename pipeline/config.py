"""Typed, strictly checked stage parameters.

Each stage module (pipeline/stages/) declares its section of `params.yaml` as a dataclass and registers
it with `@register_params("section")`; `pipeline.stages.load_all()` imports them all (the `arf` command
does), since a section is known only once its module is imported. Loading checks the *whole* file against every registered section
(unknown section or key, wrong type, value out of range), so that a typo anywhere stops any stage
with a one-line error naming the key before it writes anything.

Constraints live in field metadata: `field(default=1.0, metadata={"min": 0})`, `{"gt": 0}`,
`{"choices": (...)}`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

_SECTIONS: dict[str, type] = {}
RENAMED = {"data": "build_data", "sweep": "report"}  # sections of earlier releases, now named after their stage


T = TypeVar("T")


class ParamsError(ValueError):
    """A bad parameter; the message is one line naming the file and key."""


def register_params(section: str):
    def deco(cls):
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        _SECTIONS[section] = cls
        return cls

    return deco


def list_param_sections() -> list[str]:
    return sorted(_SECTIONS)


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    if origin is dict:
        kt, vt = typing.get_args(tp) or (Any, Any)
        return isinstance(value, dict) and all(_type_ok(k, kt) and _type_ok(v, vt) for k, v in value.items())
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def parse_section(cls: type[T], raw: Any, where: str) -> T:
    """Build `cls` from a mapping, checking keys, types and constraints; `where` names the location."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ParamsError(f"{where}.{key}: unknown key (known: {', '.join(sorted(fields))})")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        value, tp, key = raw[name], hints[name], f"{where}.{name}"
        if dataclasses.is_dataclass(tp):
            values[name] = parse_section(tp, value, key)
            continue
        if not _type_ok(value, tp):
            raise ParamsError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        if tp is float and isinstance(value, int):
            value = float(value)
        _check_constraints(key, value, f.metadata)
        values[name] = value
    obj = cls(**values)
    for name, f in fields.items():  # defaults must satisfy the constraints too
        if name not in raw and not dataclasses.is_dataclass(hints[name]):
            _check_constraints(f"{where}.{name}", getattr(obj, name), f.metadata)
    check = getattr(obj, "check", None)
    if check is not None:
        check(where)
    return obj


def _check_constraints(key: str, value: Any, meta: typing.Mapping) -> None:
    if value is None:
        return
    if "min" in meta and value < meta["min"]:
        raise ParamsError(f"{key}: must be >= {meta['min']}, got {value!r}")
    if "gt" in meta and not value > meta["gt"]:
        raise ParamsError(f"{key}: must be > {meta['gt']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise ParamsError(f"{key}: must be <= {meta['max']}, got {value!r}")
    if "choices" in meta:
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if item not in choices:
                raise ParamsError(f"{key}: {item!r} is not one of {', '.join(map(str, choices))}")


def load_params_file(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Parse and check every section of a params file; return section name -> dataclass."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    for section in raw:
        if section in RENAMED:
            raise ParamsError(f"{path}: {section}: renamed to {RENAMED[section]} (the section of the stage of that name)")
        if section not in _SECTIONS:
            raise ParamsError(f"{path}: {section}: unknown section (known: {', '.join(sorted(_SECTIONS))})")
    return {s: parse_section(cls, raw.get(s), f"{path}: {s}") for s, cls in _SECTIONS.items()}

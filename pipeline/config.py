"""Typed, strictly checked stage parameters.

Each stage module (pipeline/stages/) declares its section of `params.yaml` as a dataclass and registers
it with `@register_params("section")`; `pipeline.stages.load_all()` imports them all (the `arf` command
does), since a section is known only once its module is imported. Loading checks the *whole* file against every registered section
(unknown section or key, wrong type, value out of range), so that a typo anywhere stops any stage
with a one-line error naming the key before it writes anything.

Constraints live in field metadata: `field(default=1.0, metadata={"min": 0})`, `{"gt": 0}`, `{"max": 1}`,
`{"choices": (...)}`, `{"min_items": 1}`, `{"pattern": (regex, "what it allows")}`. Every number must be
finite, whatever the field: an infinite lr or a NaN lambda only ever produces a NaN model.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

_SECTIONS: dict[str, type] = {}
RENAMED = {"data": "build_data", "sweep": "report"}  # sections of earlier releases, now named after their stage


T = TypeVar("T")
# The devices a stage may run on; checked when the params are read, not when the first tensor moves.
DEVICE = {"pattern": (r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, cuda, cuda:N or mps")}


class ParamsError(ValueError):
    """A bad parameter; the message is one line naming the file and key."""


class _DuplicateKey(yaml.YAMLError):
    pass


class _ParamsLoader(yaml.SafeLoader):
    """YAML read as DVC reads it, and strictly: `1e-4` is a number (YAML 1.2; PyYAML alone reads it as
    text, so `-S train.lr=1e-4` would run in DVC and fail here), and a key written twice is an error
    rather than the last one silently winning."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise _DuplicateKey(f"line {line}: key {key!r} written twice (first on line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep)


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


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
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__
    return str(tp).replace("typing.", "")


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
        _check_finite(key, value)
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


def _check_finite(key: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamsError(f"{key}: must be a finite number, got {value!r}")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_finite(key, item)
    if isinstance(value, dict):
        for k, item in value.items():
            _check_finite(f"{key}.{k}", item)


def _check_constraints(key: str, value: Any, meta: typing.Mapping) -> None:
    if value is None:
        return
    if "min_items" in meta and len(value) < meta["min_items"]:
        raise ParamsError(f"{key}: needs at least {meta['min_items']} item(s), got {value!r}")
    if "pattern" in meta:
        pattern, allowed = meta["pattern"]
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            raise ParamsError(f"{key}: {value!r} is not one of {allowed}")
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
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_ParamsLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder; expected a params YAML file") from None
    except PermissionError:
        raise ParamsError(f"{path}: cannot be read (permission denied)") from None
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not UTF-8 text (byte {e.start}); expected a params YAML file") from None
    except _DuplicateKey as e:
        raise ParamsError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}: not valid YAML{where} ({getattr(e, 'problem', None) or str(e).splitlines()[0]})") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    for section in raw:
        if section in RENAMED:
            raise ParamsError(f"{path}: {section}: renamed to {RENAMED[section]} (the section of the stage of that name)")
        if section not in _SECTIONS:
            raise ParamsError(f"{path}: {section}: unknown section (known: {', '.join(sorted(_SECTIONS))})")
    return {s: parse_section(cls, raw.get(s), f"{path}: {s}") for s, cls in _SECTIONS.items()}

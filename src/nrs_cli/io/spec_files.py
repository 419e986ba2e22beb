"""Reading run-spec YAML into typed dataclasses: no aliases, extends chains, --set overrides.

Reading run-spec YAML: safe YAML without aliases, ``extends`` chains, ``--set`` overrides, and
the typed conversion of a mapping into the spec's dataclasses, every key and type checked.

Errors are :class:`NrsError` lines naming the key and the file (or "command line") it came from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Literal, Union

import yaml

from nrs_cli.errors import NrsError

NOT_KEYS = {"source"}  # dataclass fields that are not YAML keys
MAX_EXTENDS = 32  # specs in one `extends` chain: far more than any real one, far fewer than Python's recursion limit


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as overrides; each value is read as YAML (``3``, ``0.5``, ``true``, ``null``)."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise NrsError(f"--set expects KEY=VALUE, got '{assignment}'")
        if not value.strip():
            raise NrsError(f"--set {key.strip()}: no value (write null for none)")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise NrsError(f"--set {key}: cannot read the value '{value}'") from None
    return overrides


def read_spec_file(path: Path, resolve: Callable[[str], Path], seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of a spec file with its ``extends`` chain merged in (``resolve`` finds a spec by name)."""
    if str(path) in seen:
        raise NrsError(f"{path}: 'extends' loops back to itself")
    if len(seen) >= MAX_EXTENDS:
        raise NrsError(f"{seen[0]}: its 'extends' chain is deeper than {MAX_EXTENDS} specs (at {path})")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SpecLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise NrsError(f"{path}: malformed YAML{where}: {getattr(err, 'problem', err)}") from None
    except UnicodeDecodeError:
        raise NrsError(f"{path}: a run spec must be UTF-8 text") from None
    except RecursionError:
        raise NrsError(f"{path}: its YAML is nested too deeply for a run spec") from None
    except OSError as err:
        raise NrsError(f"cannot read spec {path}: {err.strerror}") from None
    if not isinstance(raw, dict):
        raise NrsError(f"{path}: a run spec must be a YAML mapping of sections")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise NrsError(f"{path}: extends: expected the name or file of another spec")
    sibling = path.parent / parent  # a relative file name means next to this spec
    parent_path = sibling if sibling.suffix in (".yaml", ".yml") and sibling.is_file() else resolve(parent)
    return _merge(read_spec_file(parent_path, resolve, seen + (str(path),)), raw)


class _SpecLoader(yaml.SafeLoader):
    """YAML without aliases: a spec never needs them, and a few bytes of nested aliases can expand to gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a run spec", self.peek_event().start_mark
            )
        return super().compose_node(parent, index)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_dotted(raw: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    *sections, key = dotted.split(".")
    node = raw
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise NrsError(f"{source}: {section}: expected a mapping of keys")
    node[key] = value


def build(cls: type, raw: Any, where: str, source: str):
    if not isinstance(raw, dict):
        raise NrsError(f"{source}: {where or 'spec'}: expected a mapping of keys, got {short(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.name not in NOT_KEYS]
    for key in raw:
        if key not in names:
            raise NrsError(f"{source}: unknown key '{join_key(where, str(key))}' (expected one of: {', '.join(names)})")
    values = {}
    for f in fields(cls):
        if f.name in NOT_KEYS:
            continue
        key = join_key(where, f.name)
        if f.name in raw:
            values[f.name] = _convert(hints[f.name], raw[f.name], key, source)
        elif f.default is dataclasses.MISSING:
            raise NrsError(f"{source}: missing key '{key}'")
    return cls(**values)


def _convert(annotation: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, key, source)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _convert(inner, value, key, source)
    if origin is Literal:
        if value not in args:
            raise NrsError(f"{source}: {key}: expected one of {', '.join(map(str, args))}, got {short(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise NrsError(f"{source}: {key}: expected a list, got {short(value)}")
        return tuple(_convert(args[0], item, key, source) for item in value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise NrsError(f"{source}: {key}: expected true or false, got {short(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise NrsError(f"{source}: {key}: expected an integer, got {short(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NrsError(f"{source}: {key}: expected a number, got {short(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise NrsError(f"{source}: {key}: expected a string, got {short(value)}")
        return value
    raise TypeError(f"unsupported spec annotation {annotation!r}")  # a bug in this module


def short(value: Any) -> str:
    """A value for an error message: its repr, cut to one readable line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def error_line(err: BaseException) -> str:
    """An exception for a one-line error message: its type and the first line of its text, cut short."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")


def join_key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key

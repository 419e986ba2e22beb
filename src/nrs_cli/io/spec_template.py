"""A run spec as commented YAML: every section and field with its value and its comment (`nrs spec new`).

The comments are the ones beside each field in :mod:`nrs_cli.io.spec` (read from its source), and
each section starts with its dataclass's docstring, so the file documents itself and stays in step
with the code. Loading the file gives the spec back (:func:`~nrs_cli.io.spec.load_spec`).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize

import yaml

from nrs_cli.io.spec import RunSpec, is_factory
from nrs_cli.io.spec_files import NOT_KEYS

COMMENT_COLUMN = 32  # where the comments start, past most values


def commented_yaml(spec: RunSpec, header: str = "") -> str:
    """The spec as YAML, top-level keys first, then one commented section per dataclass field."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in NOT_KEYS}
    comments = field_comments(RunSpec)
    for name, value in values.items():
        if not dataclasses.is_dataclass(value):
            lines.append(_line(name, value, comments.get(name, ""), ""))
    for name, section in values.items():
        if dataclasses.is_dataclass(section):
            lines += ["", *_section(name, section)]
    return "\n".join(lines) + "\n"


def _section(name: str, section) -> list[str]:
    doc = " ".join(inspect.getdoc(type(section)).split("\n\n")[0].split())
    lines = [f"# {line}" for line in _wrapped(doc, 100)] + [f"{name}:"]
    comments = field_comments(type(section))
    for field in dataclasses.fields(section):
        value, comment = getattr(section, field.name), comments.get(field.name, "")
        if name == "model" and field.name == "arch" and isinstance(value, str) and is_factory(value):
            value, comment = None, f"yours: pass --arch {value} on the command line (a file may not name code to run)"
        lines.append(_line(field.name, value, comment, "  "))
    return lines


def _line(key: str, value, comment: str, indent: str) -> str:
    text = f"{indent}{key}: {_yaml_value(value)}"
    return f"{text:<{COMMENT_COLUMN - 1}} # {comment}" if comment else text


def _yaml_value(value) -> str:
    """One value in YAML flow style (lists as ``[a, b]``, None as ``null``, strings quoted when needed)."""
    plain = list(value) if isinstance(value, tuple) else value
    text = yaml.safe_dump(plain, default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return text.removesuffix("...").strip()


def _wrapped(text: str, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return lines + ([current] if current else [])


def field_comments(cls: type) -> dict[str, str]:
    """The comment beside each field of a dataclass in its source (none when the source is not available)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            field = re.match(r"\s+(\w+)\s*:", lines[token.start[0] - 1])
            if field:
                comments[field.group(1)] = token.string.lstrip("#").strip()
    return comments

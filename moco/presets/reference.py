"""The settings reference (docs/settings.md), generated from the schema: every section of :class:`moco.schema.Config`,
each setting with its type, its default and the schema's own comment on it (what it means and why it has that
default). ``python scripts/settings_doc.py > docs/settings.md`` writes it; a test fails when the page and the
schema differ.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import tokenize
from io import StringIO
from typing import Any

from moco import schema

INTRO = """# Settings reference

Every setting a run has, by section, with its default and what it means. Set any of them with
`--set SECTION.KEY=VALUE` (repeatable), in a YAML file given with `--config` (`{section: {key: value}}`), or from
Python with `moco.Config.from_preset(NAME, {"section.key": value})`. Resolution order: defaults < preset (or the
recipe `moco pretrain` chooses for your data, see [Your own photos](photos.md)) < `--config` file < flags <
`--set`. A run's config.yaml holds every value it ran with.

This page is generated from `moco/schema.py` (`python scripts/settings_doc.py > docs/settings.md`); a test fails
when the two differ.
"""


def field_comments(cls: type) -> dict[str, str]:
    """Each field of dataclass ``cls`` -> the comment on its line and the comment-only lines under it."""
    src = inspect.getsource(cls)
    lines = src.splitlines()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    body = ast.parse(src).body[0]
    assert isinstance(body, ast.ClassDef)
    for node in body.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            text = [comments[node.lineno]] if node.lineno in comments else []
            row = node.end_lineno or node.lineno
            while row < len(lines) and lines[row].strip().startswith("#"):
                text.append(comments[row + 1])
                row += 1
            out[node.target.id] = " ".join(text)
    return out


def _value(v: Any) -> str:
    if isinstance(v, str):
        return f'`"{v}"`' if v else '`""`'
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    return f"`{v}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def sections() -> list[tuple[str, type]]:
    """The config's sections in order: (name, its dataclass)."""
    hints = {f.name: f.default_factory for f in dataclasses.fields(schema.Config)}  # type: ignore[misc]
    return [(name, factory) for name, factory in hints.items()]  # type: ignore[misc]


def render() -> str:
    """The whole page."""
    parts = [INTRO]
    for name, cls in sections():
        doc = inspect.getdoc(cls) or ""
        own = doc if doc and not doc.startswith(cls.__name__ + "(") else ""
        parts.append(f"\n## `{name}`\n")
        if own:
            parts.append(" ".join(own.split()) + "\n")
        parts.append("\n| setting | type | default | meaning |\n|---|---|---|---|\n")
        comments = field_comments(cls)
        default = cls()
        for f in dataclasses.fields(cls):
            parts.append(f"| `{name}.{f.name}` | {_cell(str(f.type))} | {_cell(_value(getattr(default, f.name)))} | "
                         f"{_cell(comments.get(f.name, ''))} |\n")
    return "".join(parts)

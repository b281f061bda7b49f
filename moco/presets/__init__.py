"""The shipped presets: one YAML file per recipe in this folder, each value with its source in a comment.

``moco presets`` lists them; a user can copy one, edit it and pass it with ``--config``. The first comment
line of each file is its one-line description.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).resolve().parent


def _load_all() -> dict[str, dict[str, Any]]:
    return {p.stem: yaml.safe_load(p.read_text()) or {} for p in sorted(PRESET_DIR.glob("*.yaml"))}


PRESETS: dict[str, dict[str, Any]] = _load_all()
"""Preset name -> nested ``{section: {key: value}}`` settings (applied over the defaults)."""


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name``."""
    return PRESET_DIR / f"{name}.yaml"


def describe(name: str) -> str:
    """The first comment line of preset ``name``'s file."""
    for line in preset_path(name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""

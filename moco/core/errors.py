"""The errors a user can cause, each reported by the CLI as one line (exit 2 for config, 1 for the rest)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration value, reported to the user in one line."""


class DataError(ValueError):
    """Bad input data (missing folder, no images, unreadable file in strict mode)."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, foreign or incompatible."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, ...); the last good checkpoint is kept."""


_ESCAPES = {**{c: f"\\x{c:02x}" for c in [*range(32), 127, *range(0x80, 0xA0)]},
            ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def escaped(text: str) -> str:
    """``text`` with its control characters (newlines, tabs, escape codes) written as backslash escapes, so that
    a message stays on one line and a terminal shows it as written."""
    return text.translate(_ESCAPES)


def shown(path: object) -> str:
    """A path as a message shows it: as it is, or, when it holds control characters (a newline in a file name),
    quoted with them escaped, as ``ls`` does: ``'new\\nline.jpg'``."""
    s = str(path)
    e = escaped(s)
    return s if e == s else f"'{e}'"

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

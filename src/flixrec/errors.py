"""Errors a user should see as one clear paragraph, not a traceback."""

from __future__ import annotations

from pathlib import Path


class FlixrecError(Exception):
    """A problem with the user's input or configuration; the message says what to fix."""


class DataError(FlixrecError):
    """Bad input data: names the file, the 1-based line number (when known) and the problem."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class ConfigError(FlixrecError):
    """An impossible or unknown configuration value, caught before any training."""

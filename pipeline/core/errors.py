"""One error contract: every expected failure is a :class:`PipelineError` that carries its exit code.

``pipeline/cli.py`` catches it once and prints ``error: <message>`` (a traceback only with
``--debug``), then exits with the code. Messages name the file, key or item at fault and the fix.
Anything else that escapes is a bug: exit 1 with the traceback.
"""

from __future__ import annotations

BAD_INPUT = 2
"""A config, a command-line value, a dataset, a shard folder, a checkpoint or an image is wrong."""
UNAVAILABLE = 3
"""Something outside is busy or unreachable: the run folder's lock, MLflow, the Ray cluster."""
CANNOT_WRITE = 4
"""An output could not be written: read-only folder, full disk, no permission."""


class PipelineError(Exception):
    """An expected failure with a message for the user and the exit code the CLI returns."""

    exit_code: int = BAD_INPUT


class InputError(PipelineError, ValueError):
    """Bad input (exit 2). A ValueError too, so callers that catch ValueError keep working."""


class UnavailableError(PipelineError, RuntimeError):
    """A busy or unreachable service (exit 3)."""

    exit_code = UNAVAILABLE


class OutputError(PipelineError, OSError):
    """An output that could not be written (exit 4)."""

    exit_code = CANNOT_WRITE

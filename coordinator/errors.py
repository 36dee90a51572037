"""Errors of the coordinator: those of its core, each mapped to one gRPC status in ``service.py``,
and the one that stops it from starting.

::

    CoordinatorError
    ├── InvalidArgument      -> INVALID_ARGUMENT
    ├── NotFound             -> NOT_FOUND
    ├── AlreadyExists        -> ALREADY_EXISTS
    ├── FailedPrecondition   -> FAILED_PRECONDITION
    └── ResourceExhausted    -> RESOURCE_EXHAUSTED
    StartupError             -> one ``error:`` line at start, exit 1
"""

from __future__ import annotations


class CoordinatorError(Exception):
    """Root of the errors the core raises on a request it refuses."""


class InvalidArgument(CoordinatorError):
    """Raised when a request field is malformed; the message starts with the field's name."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(CoordinatorError):
    """Raised when the named job does not exist."""


class AlreadyExists(CoordinatorError):
    """Raised when a job id is taken by a job created from a different spec."""


class FailedPrecondition(CoordinatorError):
    """Raised when the job's status forbids the operation (e.g. resume a completed job)."""


class ResourceExhausted(CoordinatorError):
    """Raised when a request goes past one of the coordinator's limits; the message names it."""


class StartupError(Exception):
    """Raised when the coordinator's configuration forbids starting: a malformed tokens file,
    unusable certificates, or a listen address reachable from other hosts without authentication.

    The message is one line, names the file or flag at fault and never quotes a secret.
    """

"""Errors of the Parcelo client, CLI and worker SDK.

All derive from :class:`ParceloError`::

    ParceloError
    ├── PermanentError        raised by a handler: fail the leaf, do not retry
    ├── ConfigError           bad local configuration (handler path, flags, job options)
    ├── JobNotCompleted       a job whose result was awaited failed or was cancelled
    └── RpcError              the coordinator answered with a gRPC error
        ├── InvalidArgument
        ├── NotFound
        ├── AlreadyExists
        ├── FailedPrecondition
        ├── Unavailable
        ├── Unauthenticated
        └── PermissionDenied
"""

from __future__ import annotations

import grpc

from parcelo.v1 import types_pb2


class ParceloError(Exception):
    """Root of every error Parcelo raises."""


class PermanentError(ParceloError):
    """Raised by a handler when retrying cannot help; the leaf goes to error at once."""


class ConfigError(ParceloError):
    """Raised when local configuration is unusable (a handler that cannot be imported, a bad flag,
    a job option out of range).

    Attributes:
        field: The option at fault (``"max_range_size"``, ``"retry.jitter"``) when there is one;
            the message then starts with ``"<field>: "``.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class JobNotCompleted(ParceloError):
    """A job ended without completing (failed or cancelled), so it has no final result.

    ``job`` is the job as it ended; its ``result_json`` holds the partial result.
    """

    def __init__(self, job: types_pb2.Job) -> None:
        status = types_pb2.JobStatus.Name(job.status).removeprefix("JOB_STATUS_").lower()
        super().__init__(f"job {job.id} did not complete ({status}): {job.reason or 'no reason given'}")
        self.job = job


class RpcError(ParceloError):
    """Raised when the coordinator answers a call with a gRPC error status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(RpcError):
    """Raised when the request was malformed; the message names the field."""


class NotFound(RpcError):
    """Raised when the job (or lease) named does not exist."""


class AlreadyExists(RpcError):
    """Raised when a job id is taken by a job with a different spec."""


class FailedPrecondition(RpcError):
    """Raised when the job is in a state that forbids the call (e.g. resume a completed job)."""


class Unavailable(RpcError):
    """Raised when the coordinator cannot be reached (down, or a TLS handshake failed)."""


class Unauthenticated(RpcError):
    """Raised when the coordinator requires a token and none, or an unknown one, was sent."""


class PermissionDenied(RpcError):
    """Raised when the token's role may not make the call (e.g. a ``reader`` creating a job)."""


_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def from_grpc(err: grpc.RpcError) -> RpcError:
    """Translate a grpc error (sync or aio) into the matching :class:`RpcError` subclass."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return _BY_CODE.get(code, RpcError)(code, details or code.name)

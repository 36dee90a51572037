"""Bearer tokens with roles: the tokens file, which role may call which RPC, and the interceptor.

The tokens file (``--auth-tokens``) holds one ``ROLE TOKEN`` per line. Lines starting with ``#``
are comments and blank lines are ignored. ``TOKEN`` may be written ``sha256:HEX``, the hex SHA-256
of the token, so the file need not hold the secrets themselves::

    # the CI's admin token, as its digest (printf %s "$TOKEN" | sha256sum)
    admin  sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
    reader grafana-4b1d0e9c
    worker sha256:...

Callers send the metadata ``authorization: Bearer TOKEN``. ``worker`` may call the
``WorkerService``, ``reader`` the read-only ``JobService`` calls, ``admin`` everything (the
``AdminService`` included); the
health service needs no token. :data:`ROLES` says it per RPC, and :func:`method_rules` refuses
to build a table for a service with an RPC it does not list, so a new RPC without a decision
stops the coordinator from starting (and fails ``tests/test_security_unit.py``).

The check runs once per call, in :class:`TokenAuth`, not once per message: a worker's ``Work``
stream is one call. Without ``--auth-tokens`` the server has no interceptor at all.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio

from parcelo.coordinator.errors import StartupError

SHA256_PREFIX = "sha256:"
"""Marks a token written as its hex SHA-256 digest in the tokens file."""

_PRINTABLE = frozenset(string.printable) - frozenset(string.whitespace)


class Role(StrEnum):
    """What a token may do; its name is the first field of a tokens-file line."""

    ADMIN = "admin"
    READER = "reader"
    WORKER = "worker"


ADMINS = frozenset({Role.ADMIN})
READERS = frozenset({Role.ADMIN, Role.READER})
WORKERS = frozenset({Role.ADMIN, Role.WORKER})

ROLES: Mapping[str, frozenset[Role] | None] = {
    "parcelo.v1.JobService.CreateJob": ADMINS,
    "parcelo.v1.JobService.GetJob": READERS,
    "parcelo.v1.JobService.ListJobs": READERS,
    "parcelo.v1.JobService.PauseJob": ADMINS,
    "parcelo.v1.JobService.ResumeJob": ADMINS,
    "parcelo.v1.JobService.CancelJob": ADMINS,
    "parcelo.v1.JobService.DeleteJob": ADMINS,
    "parcelo.v1.JobService.RetryFailed": ADMINS,
    "parcelo.v1.JobService.GetJobTree": READERS,
    "parcelo.v1.JobService.WatchJob": READERS,
    "parcelo.v1.JobService.UpdateJob": ADMINS,
    "parcelo.v1.QueueService.ListQueues": READERS,
    "parcelo.v1.QueueService.GetQueue": READERS,
    "parcelo.v1.QueueService.UpdateQueue": ADMINS,
    "parcelo.v1.QueueService.PauseQueue": ADMINS,
    "parcelo.v1.QueueService.ResumeQueue": ADMINS,
    "parcelo.v1.ScheduleService.CreateSchedule": ADMINS,
    "parcelo.v1.ScheduleService.GetSchedule": READERS,
    "parcelo.v1.ScheduleService.ListSchedules": READERS,
    "parcelo.v1.ScheduleService.UpdateSchedule": ADMINS,
    "parcelo.v1.ScheduleService.PauseSchedule": ADMINS,
    "parcelo.v1.ScheduleService.ResumeSchedule": ADMINS,
    "parcelo.v1.ScheduleService.DeleteSchedule": ADMINS,
    "parcelo.v1.ScheduleService.TriggerSchedule": ADMINS,
    "parcelo.v1.WorkerService.Work": WORKERS,
    "parcelo.v1.WorkerService.Lease": WORKERS,
    "parcelo.v1.WorkerService.Heartbeat": WORKERS,
    "parcelo.v1.WorkerService.Complete": WORKERS,
    "parcelo.v1.WorkerService.Fail": WORKERS,
    "parcelo.v1.AdminService.Backup": ADMINS,
    # Load balancers and orchestrators probe health without credentials; it reveals only whether
    # the coordinator serves.
    "grpc.health.v1.Health.Check": None,
    "grpc.health.v1.Health.List": None,
    "grpc.health.v1.Health.Watch": None,
    "parcelo.v1.WorkerService.ListWorkers": READERS,
    # The API's own description (grpcurl without the .proto files): public in the protos, but
    # like every call but health checks it answers only a known token.
    "grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo": READERS,
}
"""The roles that may call each RPC (by its full protobuf name); ``None``: anyone, without a token."""


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may call one RPC, and its shape (a refusal must be a handler of the same kind)."""

    allowed: frozenset[Role] | None
    request_streaming: bool
    response_streaming: bool


def method_rules(services: Iterable[ServiceDescriptor]) -> dict[str, Rule]:
    """The rule of every RPC of ``services``, keyed by gRPC method path (``/pkg.Service/Method``).

    Raises:
        StartupError: An RPC has no entry in :data:`ROLES`.
    """
    rules: dict[str, Rule] = {}
    for service in services:
        for method in service.methods:
            if method.full_name not in ROLES:
                raise StartupError(f"RPC {method.full_name} has no roles: add it to ROLES in {__name__}")
            rules[f"/{service.full_name}/{method.name}"] = Rule(
                ROLES[method.full_name], method.client_streaming, method.server_streaming
            )
    return rules


# -- the tokens file -----------------------------------------------------------------------------


def digest(token: str) -> bytes:
    """The SHA-256 of a token: what the coordinator keeps and compares."""
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(text: str, source: str) -> dict[bytes, Role]:
    """The tokens of a tokens file, as ``{sha256 digest: role}``.

    Args:
        text: The file's contents.
        source: Its name, for error messages.

    Raises:
        StartupError: A line is malformed. The message names ``source`` and the line number and
            never quotes the line: a field in the wrong place may be a secret.
    """
    tokens: dict[bytes, Role] = {}
    first_seen: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{source}:{number}"
        if len(fields) == 1:
            raise StartupError(f"{where}: the token is missing (expected ROLE TOKEN)")
        if len(fields) > 2:
            raise StartupError(f"{where}: {len(fields)} fields, expected ROLE TOKEN")
        name, token = fields
        try:
            role = Role(name)
        except ValueError:
            raise StartupError(f"{where}: unknown role (expected one of {', '.join(Role)})") from None
        key = _stored_digest(token, where)
        if key in first_seen:
            raise StartupError(f"{where}: the same token as line {first_seen[key]}")
        first_seen[key] = number
        tokens[key] = role
    return tokens


def _stored_digest(token: str, where: str) -> bytes:
    if token.startswith(SHA256_PREFIX):
        hexdigest = token.removeprefix(SHA256_PREFIX)
        if len(hexdigest) != 64 or not set(hexdigest) <= set(string.hexdigits):
            raise StartupError(f"{where}: {SHA256_PREFIX} must be followed by 64 hex digits")
        return bytes.fromhex(hexdigest)
    if not set(token) <= _PRINTABLE:
        # gRPC metadata values are printable ASCII: no client could send this token.
        raise StartupError(f"{where}: the token must be printable ASCII")
    return digest(token)


def load_tokens(path: Path) -> dict[bytes, Role]:
    """Read and parse a tokens file (see :func:`parse_tokens`).

    Raises:
        StartupError: The file cannot be read or is malformed.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise StartupError(f"cannot read tokens file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise StartupError(f"tokens file {path} is not UTF-8 text") from None
    return parse_tokens(text, str(path))


# -- the interceptor -----------------------------------------------------------------------------

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class TokenAuth(aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type hints
    """Let a call through only with a token whose role may call its RPC.

    No token, or an unknown one: ``UNAUTHENTICATED``; a known token whose role may not call the
    RPC: ``PERMISSION_DENIED``. Neither message quotes the token, and nothing is logged per call
    (a flood of refused calls must not flood the log).

    Args:
        tokens: ``{sha256 digest: role}``, as :func:`load_tokens` returns.
        services: The descriptors of every service the server serves (see :func:`method_rules`).
    """

    def __init__(self, tokens: Mapping[bytes, Role], services: Iterable[ServiceDescriptor]) -> None:
        self._tokens: Mapping[bytes, Role] = dict(tokens)
        self._rules = method_rules(services)

    @property
    def count(self) -> int:
        """The number of tokens accepted."""
        return len(self._tokens)

    def role_of(self, token: str) -> Role | None:
        """The role of ``token``, None for an unknown one: the HTTP port's check, on the same
        table (see :meth:`intercept_service` on why a lookup by digest leaks nothing)."""
        return self._tokens.get(digest(token))

    def replace(self, tokens: Mapping[bytes, Role]) -> None:
        """Check new calls against ``tokens`` (SIGHUP). Calls already running, streams included, go on."""
        self._tokens = dict(tokens)

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """The call's handler if its token allows it, else a handler that refuses it."""
        rule = self._rules.get(details.method)
        if rule is None:
            return None  # not an RPC of a served service: UNIMPLEMENTED, as without this interceptor
        if rule.allowed is None:
            return await continuation(details)
        token = _bearer(details.invocation_metadata or ())
        if token is None:
            return _refusal(
                rule, grpc.StatusCode.UNAUTHENTICATED, "no token: send metadata 'authorization: Bearer TOKEN'"
            )
        # A dict lookup on the digest rather than hmac.compare_digest against each stored digest:
        # its timing depends only on the SHA-256 of what the caller sent, and learning how that
        # digest relates to a stored one brings an attacker no closer to a token that hashes to
        # it (that takes a SHA-256 preimage). So it leaks nothing about the tokens, in O(1).
        role = self._tokens.get(digest(token))
        if role is None:
            return _refusal(rule, grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        if role not in rule.allowed:
            return _refusal(
                rule, grpc.StatusCode.PERMISSION_DENIED, f"role {role} may not call {details.method}"
            )
        return await continuation(details)


def bearer(value: str) -> str | None:
    """The token of an ``authorization`` value ``Bearer TOKEN`` (the scheme is case-insensitive)."""
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _bearer(metadata: Sequence[tuple[str, Any]]) -> str | None:
    """The token of an ``authorization: Bearer TOKEN`` metadata entry."""
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str):
            return bearer(value)
    return None


def _refusal(rule: Rule, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the RPC's kind that ends the call with ``code`` before reading any request."""

    async def refuse(request: object, context: aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    if rule.request_streaming:
        if rule.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse)
        return grpc.stream_unary_rpc_method_handler(refuse)
    if rule.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)

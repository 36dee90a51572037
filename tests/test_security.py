"""Security, end to end: real coordinator processes with TLS, mutual TLS and tokens, real clients,
a real worker process and the real CLIs.

Two coordinators serve the whole module (TLS with tokens on every interface, which tokens allow,
and mutual TLS with tokens on loopback); tests that restart, reload or refuse to start make
their own.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parcelo import JobOptions
from parcelo.channel import TLS, token_metadata
from parcelo.client import Client
from parcelo.coordinator.auth import digest
from parcelo.coordinator.server import SERVED, SERVICES
from parcelo.errors import Unavailable
from parcelo.testing import BIN, CoordinatorProcess, Proc, free_port, wait_for
from parcelo.v1 import jobs_pb2, types_pb2, worker_pb2
from tests.certs import Pki
from tests.support import RawWorker, start_recording_workers

pytestmark = pytest.mark.integration

ROLES = ("admin", "reader", "worker")
TOKENS = {role: f"{role}-{secrets.token_urlsafe(16)}" for role in ROLES}
"""This session's token of each role: random, so finding one in a log can only mean it leaked."""
WRONG = f"wrong-{secrets.token_urlsafe(16)}"

READ_ONLY = frozenset(
    {"GetJob", "ListJobs", "GetJobTree", "WatchJob", "ListQueues", "GetQueue", "GetSchedule", "ListSchedules"}
)
"""The calls a reader may make, stated here again to check the coordinator's table."""


def tokens_file(path: Path, tokens: dict[str, str]) -> Path:
    """A tokens file with the reader's token as its digest, the others in the clear."""
    lines = ["# test tokens"]
    for role, token in tokens.items():
        lines.append(f"{role} sha256:{digest(token).hex()}" if role == "reader" else f"{role} {token}")
    path.write_text("\n".join(lines) + "\n")
    return path


def server_flags(
    pki: Pki, *, mutual: bool = False, cert: Path | None = None, key: Path | None = None
) -> list[str]:
    flags = ["--tls-cert", str(cert or pki.server.cert), "--tls-key", str(key or pki.server.key)]
    return [*flags, "--tls-client-ca", str(pki.ca)] if mutual else flags


def client_tls(pki: Pki, *, mutual: bool) -> TLS:
    return TLS(pki.ca, pki.client.cert, pki.client.key) if mutual else TLS(pki.ca)


def logged_tokens(text: str) -> list[str]:
    return [token for token in (*TOKENS.values(), WRONG) if token in text]


def log_of(coord: CoordinatorProcess) -> str:
    assert coord.proc is not None
    return coord.proc.output()


@pytest.fixture(scope="module")
def secured(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, CoordinatorProcess]]:
    """``tls``: TLS and tokens, listening on every interface; ``mtls``: mutual TLS and tokens."""
    root = tmp_path_factory.mktemp("secured")
    tokens = tokens_file(root / "tokens", TOKENS)
    coords: dict[str, CoordinatorProcess] = {}
    try:
        for name, mutual in (("tls", False), ("mtls", True)):
            port = free_port()
            coords[name] = CoordinatorProcess(
                root / name,
                root,
                port,
                # DEBUG: the most the coordinator ever logs, all of it checked for tokens.
                [*server_flags(pki, mutual=mutual), "--auth-tokens", str(tokens), "--log-level", "DEBUG"],
                listen=f"0.0.0.0:{port}" if name == "tls" else None,
                tls=client_tls(pki, mutual=mutual),
                token=TOKENS["admin"],
                http=True,
            ).start()
        yield coords
    finally:
        for coord in coords.values():
            coord.stop()


# -- every credential against every RPC ---------------------------------------------------------


def call(channel: grpc.Channel, path: str, method: MethodDescriptor, metadata: Any) -> grpc.StatusCode:
    """Call an RPC with an empty request (reading one answer of a stream); its status code.

    Empty requests are refused by the handlers (a missing job, a spec without a range, a stream
    without hello) or harmless (empty heartbeats and results), so no state changes.
    """
    request = GetMessageClass(method.input_type)()
    answer = GetMessageClass(method.output_type)
    kind = (
        ("stream" if method.client_streaming else "unary")
        + "_"
        + ("stream" if method.server_streaming else "unary")
    )
    multicallable = getattr(channel, kind)(
        path, request_serializer=type(request).SerializeToString, response_deserializer=answer.FromString
    )
    argument = iter([request]) if method.client_streaming else request
    try:
        if method.server_streaming:
            stream = multicallable(argument, metadata=metadata, timeout=10)
            try:
                next(stream)
            finally:
                stream.cancel()
        else:
            multicallable(argument, metadata=metadata, timeout=10)
    except grpc.RpcError as err:
        assert WRONG not in (err.details() or "") and not logged_tokens(err.details() or "")
        return err.code()
    return grpc.StatusCode.OK


UNIMPLEMENTED_BY_HANDLER = frozenset({"/grpc.health.v1.Health/List"})
"""RPCs whose handler answers UNIMPLEMENTED (grpcio-health-checking's aio servicer has no List yet)."""


def outcome(path: str, code: grpc.StatusCode) -> str:
    """What a status code says about the token check: refused, or let through to the handler."""
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return code.name
    if code == grpc.StatusCode.UNIMPLEMENTED and path in UNIMPLEMENTED_BY_HANDLER:
        return "allowed"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL):
        return f"broken ({code.name})"  # never expected: the call did not reach its handler
    return "allowed"  # OK, or the handler's own answer to an empty request (NOT_FOUND, ...)


def expected(who: str, service: str, method: str) -> str:
    if service == "grpc.health.v1.Health":
        return "allowed"
    if who not in ROLES:
        return "UNAUTHENTICATED"
    read = (
        service in ("parcelo.v1.JobService", "parcelo.v1.QueueService", "parcelo.v1.ScheduleService")
        and method in READ_ONLY
    ) or method == "ListWorkers"
    allowed = (
        who == "admin"
        or (who == "worker" and service == "parcelo.v1.WorkerService" and method != "ListWorkers")
        or (who == "reader" and (read or service.startswith("grpc.reflection.")))
    )
    return "allowed" if allowed else "PERMISSION_DENIED"


@pytest.mark.parametrize("who", [*ROLES, "no token", "wrong token"])
@pytest.mark.parametrize("transport", ["tls", "mtls"])
def test_each_credential_against_each_rpc(
    secured: dict[str, CoordinatorProcess], transport: str, who: str
) -> None:
    coord = secured[transport]
    token = TOKENS.get(who, WRONG if who == "wrong token" else None)
    metadata = token_metadata(token)
    got: dict[str, str] = {}
    want: dict[str, str] = {}
    for service in SERVED:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            got[path] = outcome(path, call(coord.channel, path, method, metadata))
            want[path] = expected(who, service.full_name, method.name)
    assert got == want
    assert logged_tokens(log_of(coord)) == []


def test_health_needs_no_token(secured: dict[str, CoordinatorProcess]) -> None:
    for coord in secured.values():
        health = health_pb2_grpc.HealthStub(coord.channel)
        for name in SERVICES:
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_a_client_without_a_certificate_cannot_reach_a_mutual_tls_coordinator(
    secured: dict[str, CoordinatorProcess], pki: Pki
) -> None:
    target = secured["mtls"].target
    with (
        Client(target, tls=TLS(pki.ca), token=TOKENS["admin"], timeout=10) as client,
        pytest.raises(Unavailable),
    ):
        next(client.list_jobs())
    with Client(target, tls=client_tls(pki, mutual=True), token=TOKENS["admin"], timeout=10) as client:
        list(client.list_jobs())


def test_a_plaintext_client_cannot_talk_to_a_tls_coordinator(secured: dict[str, CoordinatorProcess]) -> None:
    with (
        Client(secured["tls"].target, token=TOKENS["admin"], timeout=10) as client,
        pytest.raises(Unavailable),
    ):
        next(client.list_jobs())


# -- the real worker and CLI ---------------------------------------------------------------------


def test_a_worker_process_with_a_token_runs_a_job_over_tls(
    secured: dict[str, CoordinatorProcess], pki: Pki, procs: list[Proc], log_dir: Path, tmp_path: Path
) -> None:
    coord = secured["tls"]
    job = coord.create_job(JobOptions(0, 1000, max_range_size=100))
    [worker] = start_recording_workers(
        coord,
        procs,
        log_dir,
        tmp_path / "runs.log",
        "record",
        "--tls-ca",
        str(pki.ca),
        "--token",
        TOKENS["worker"],
    )
    done = coord.wait_status(
        job.id, {types_pb2.JOB_STATUS_COMPLETED, types_pb2.JOB_STATUS_FAILED}, timeout=30
    )
    assert done.status == types_pb2.JOB_STATUS_COMPLETED
    assert done.stats.range_processed == 1000
    assert worker.terminate() == 0, worker.output()
    assert logged_tokens(worker.output()) == []


def parcelo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "parcelo"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_the_admin_cli_takes_tls_and_a_token_and_says_when_the_token_is_wrong(
    secured: dict[str, CoordinatorProcess], pki: Pki
) -> None:
    coord = secured["tls"]
    coord.create_job(JobOptions(0, 10, max_range_size=10, job_id="listed"))
    listed = parcelo(
        "--target", coord.target, "--tls-ca", str(pki.ca), "--token", TOKENS["reader"], "job", "list"
    )
    assert listed.returncode == 0, listed.stderr
    assert "listed" in listed.stdout

    by_env = parcelo(
        "--target",
        coord.target,
        "job",
        "get",
        "listed",
        env={"PARCELO_TLS_CA": str(pki.ca), "PARCELO_TOKEN": TOKENS["admin"]},
    )
    assert by_env.returncode == 0, by_env.stderr

    wrong = parcelo("--target", coord.target, "--tls-ca", str(pki.ca), "--token", WRONG, "job", "list")
    assert wrong.returncode == 1
    assert wrong.stderr == (
        f"error: coordinator at {coord.target} wants a valid token (UNAUTHENTICATED: unknown token); "
        "give it with --token or PARCELO_TOKEN\n"
    )
    denied = parcelo(
        "--target",
        coord.target,
        "--tls-ca",
        str(pki.ca),
        "--token",
        TOKENS["reader"],
        "job",
        "cancel",
        "listed",
    )
    assert denied.returncode == 1
    assert denied.stderr == (
        "error: the token may not do this (PERMISSION_DENIED: role reader may not call "
        "/parcelo.v1.JobService/CancelJob)\n"
    )
    plaintext = parcelo("--target", coord.target, "--token", TOKENS["admin"], "job", "list")
    assert plaintext.returncode == 1
    assert plaintext.stderr.startswith(f"error: cannot reach coordinator at {coord.target} (UNAVAILABLE")


# -- start-up rules ------------------------------------------------------------------------------


def coordinator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "parcelo-coordinator"), *args], capture_output=True, text=True, timeout=30
    )


def test_an_unauthenticated_coordinator_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    refused = coordinator("--data-dir", str(tmp_path / "data"), "--listen", "0.0.0.0:0")
    assert refused.returncode == 1
    [line] = refused.stderr.splitlines()
    assert line.startswith("error: refusing to listen on 0.0.0.0:0 without --auth-tokens or --tls-client-ca")
    assert "--insecure-listen-anywhere" in line
    assert not (tmp_path / "data").exists()  # refused before the store was opened


def test_insecure_listen_anywhere_serves_with_a_warning(
    make_coordinator: type[CoordinatorProcess], log_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    coord = make_coordinator(
        tmp_path / "data", log_dir, port, ["--insecure-listen-anywhere"], listen=f"0.0.0.0:{port}"
    ).start()
    warnings = [line for line in log_of(coord).splitlines() if " WARNING " in line]
    assert len(warnings) == 1
    assert (
        f"listening on 0.0.0.0:{port} without tokens or client certificates (--insecure-listen-anywhere)"
        in warnings[0]
    )
    assert coord.stop() == 0


def test_a_malformed_tokens_file_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# tokens\nadmin {TOKENS['admin']}\n{TOKENS['worker']} worker\n")
    refused = coordinator("--data-dir", str(tmp_path / "data"), "--auth-tokens", str(tokens))
    assert refused.returncode == 1
    assert refused.stderr == f"error: {tokens}:3: unknown role (expected one of admin, reader, worker)\n"


# -- reload on SIGHUP ----------------------------------------------------------------------------


def served_common_name(port: int, pki: Pki) -> str:
    """The common name of the certificate the coordinator shows a new connection."""
    context = ssl.create_default_context(cafile=pki.ca)
    context.set_alpn_protocols(["h2"])  # gRPC servers require HTTP/2 negotiated
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="localhost") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    [name] = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(name.value)


def test_sighup_reloads_certificates_and_tokens_without_dropping_streams(
    make_coordinator: type[CoordinatorProcess], pki: Pki, log_dir: Path, tmp_path: Path
) -> None:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    tokens = tokens_file(tmp_path / "tokens", TOKENS)
    coord = make_coordinator(
        tmp_path / "data",
        log_dir,
        extra=[*server_flags(pki, cert=cert, key=key), "--auth-tokens", str(tokens)],
        tls=TLS(pki.ca),
        token=TOKENS["admin"],
    ).start()
    assert coord.proc is not None
    job = coord.create_job(JobOptions(0, 100, max_range_size=10))
    stream = RawWorker(coord.channel, "streaming", metadata=token_metadata(TOKENS["worker"]))
    try:
        [lease] = stream.lease(1)
        assert served_common_name(coord.port, pki) == "server"

        # Rotate: the new certificate, and a new worker token instead of the old one.
        shutil.copy(pki.rotated.cert, cert)
        shutil.copy(pki.rotated.key, key)
        new_worker = f"worker-{secrets.token_urlsafe(16)}"
        tokens_file(tokens, {**TOKENS, "worker": new_worker})
        os.kill(coord.proc.pid, signal.SIGHUP)
        wait_for(lambda: "reloaded the certificates" in log_of(coord), 10, "the reload")
        assert "reloaded 3 tokens" in log_of(coord)

        assert served_common_name(coord.port, pki) == "rotated"
        beat = worker_pb2.HeartbeatRequest(leases=[worker_pb2.LeaseHeartbeat(fence=lease.fence)])
        with pytest.raises(grpc.RpcError) as refused:
            coord.workers.Heartbeat(beat, metadata=token_metadata(TOKENS["worker"]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        coord.workers.Heartbeat(beat, metadata=token_metadata(new_worker), timeout=10)

        # The stream opened with the old token and certificate goes on.
        assert stream.heartbeat(worker_pb2.LeaseHeartbeat(fence=lease.fence)).directives[0].action == (
            worker_pb2.DIRECTIVE_ACTION_CONTINUE
        )
        assert list(stream.complete([lease.fence]).accepted) == [lease.fence]

        # A broken tokens file is logged and the tokens in use stay.
        tokens.write_text("admin\n")
        os.kill(coord.proc.pid, signal.SIGHUP)
        wait_for(lambda: "tokens not reloaded" in log_of(coord), 10, "the refused reload")
        assert f"{tokens}:1: the token is missing" in log_of(coord)
        coord.jobs.GetJob(
            jobs_pb2.GetJobRequest(job_id=job.id), metadata=token_metadata(TOKENS["reader"]), timeout=10
        )
    finally:
        stream.close()
    assert logged_tokens(log_of(coord)) == [] and new_worker not in log_of(coord)
    assert coord.stop() == 0


# -- the HTTP port under the same TLS and tokens -------------------------------------------------


def https(
    coord: CoordinatorProcess,
    path: str,
    token: str | None = None,
    *,
    method: str = "GET",
    pki: Pki,
    certificate: bool = True,
) -> tuple[int, dict[str, Any]]:
    """An HTTPS request to the coordinator's HTTP port: (status, JSON body)."""
    import http.client
    import json

    context = ssl.create_default_context(cafile=str(pki.ca))
    if certificate:
        context.load_cert_chain(pki.client.cert, pki.client.key)
    connection = http.client.HTTPSConnection("127.0.0.1", coord.http_port, context=context, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request(method, path, body=b"{}" if method == "POST" else None, headers=headers)
        response = connection.getresponse()
        data = response.read()
        if response.getheader("Content-Type", "").startswith("application/json"):
            return response.status, json.loads(data)
        return response.status, {"text": data.decode()}
    finally:
        connection.close()


@pytest.mark.parametrize("transport", ["tls", "mtls"])
def test_the_http_port_takes_the_same_tokens_and_roles_over_https(
    secured: dict[str, CoordinatorProcess], pki: Pki, transport: str
) -> None:
    coord = secured[transport]
    assert https(coord, "/healthz", pki=pki)[0] == 200, "health needs no token"
    assert https(coord, "/readyz", pki=pki) == (200, {"status": "SERVING"})
    status, body = https(coord, "/api/v1/jobs", pki=pki)
    assert (status, body["code"]) == (401, "UNAUTHENTICATED")
    assert https(coord, "/api/v1/jobs", WRONG, pki=pki)[0] == 401
    assert https(coord, "/api/v1/jobs", TOKENS["reader"], pki=pki)[0] == 200
    assert https(coord, "/api/v1/workers", TOKENS["reader"], pki=pki)[0] == 200
    assert https(coord, "/metrics", TOKENS["reader"], pki=pki)[0] == 200
    status, body = https(coord, "/api/v1/jobs", TOKENS["worker"], pki=pki)
    assert (status, body["code"]) == (403, "PERMISSION_DENIED")
    # Readers read; steering a job is an admin's (a missing job: the admin got through).
    assert https(coord, "/api/v1/jobs/nope/cancel", TOKENS["reader"], method="POST", pki=pki)[0] == 403
    status, body = https(coord, "/api/v1/jobs/nope/cancel", TOKENS["admin"], method="POST", pki=pki)
    assert (status, body["code"]) == (404, "NOT_FOUND")
    assert logged_tokens(log_of(coord)) == []


def test_the_http_port_of_a_mutual_tls_coordinator_wants_a_client_certificate(
    secured: dict[str, CoordinatorProcess], pki: Pki
) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        https(secured["mtls"], "/healthz", pki=pki, certificate=False)
    assert https(secured["tls"], "/healthz", pki=pki, certificate=False)[0] == 200


def test_an_exposed_http_port_is_refused_without_authentication(tmp_path: Path, log_dir: Path) -> None:
    result = subprocess.run(
        [
            str(BIN / "parcelo-coordinator"),
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--http-listen",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: refusing to listen on 0.0.0.0:0 (--http-listen) without --auth-tokens")

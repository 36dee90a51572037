"""Unit tests of the security pieces that need no coordinator: the tokens file, the role table,
the loopback rule, the server's certificate checks and the client's TLS and token settings."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from parcelo.channel import TLS, tls_of, token_metadata
from parcelo.coordinator import auth
from parcelo.coordinator.auth import Role, load_tokens, method_rules, parse_tokens
from parcelo.coordinator.errors import StartupError
from parcelo.coordinator.listen import exposed, host_of, is_loopback
from parcelo.coordinator.server import SERVED
from parcelo.coordinator.tls import ServerTLS, certificate_configuration
from parcelo.errors import ConfigError
from parcelo.v1 import admin_pb2, jobs_pb2, queues_pb2, schedules_pb2, types_pb2, worker_pb2
from tests.certs import Pki


def proto_services() -> Iterator[ServiceDescriptor]:
    """Every service of Parcelo's proto files, and the health and reflection services the
    coordinator serves."""
    for module in (
        jobs_pb2,
        types_pb2,
        worker_pb2,
        queues_pb2,
        schedules_pb2,
        admin_pb2,
        health_pb2,
        reflection_pb2,
    ):
        yield from module.DESCRIPTOR.services_by_name.values()


# -- the role table ------------------------------------------------------------------------------


def test_every_rpc_of_every_service_has_roles_and_the_table_names_no_other() -> None:
    methods = {method.full_name for service in proto_services() for method in service.methods}
    assert methods == set(auth.ROLES)


def test_the_coordinator_serves_every_service_of_the_protos() -> None:
    # SERVED is what the token check builds its rules from; a service missing from it is unchecked.
    assert {s.full_name for s in SERVED} == {s.full_name for s in proto_services()}


def test_an_rpc_without_roles_stops_the_rules_from_being_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(auth.ROLES, "parcelo.v1.JobService.RetryFailed")
    with pytest.raises(StartupError, match=r"RPC parcelo\.v1\.JobService\.RetryFailed has no roles"):
        method_rules(SERVED)


def test_the_rules_know_each_rpcs_path_and_shape() -> None:
    rules = method_rules(SERVED)
    work = rules["/parcelo.v1.WorkerService/Work"]
    assert (work.allowed, work.request_streaming, work.response_streaming) == (auth.WORKERS, True, True)
    watch = rules["/parcelo.v1.JobService/WatchJob"]
    assert (watch.allowed, watch.request_streaming, watch.response_streaming) == (auth.READERS, False, True)
    assert rules["/grpc.health.v1.Health/Check"].allowed is None


def test_readers_read_jobs_workers_work_and_only_admins_change_jobs() -> None:
    def callers(prefix: str) -> dict[str, frozenset[Role] | None]:
        return {
            name.removeprefix(prefix): roles for name, roles in auth.ROLES.items() if name.startswith(prefix)
        }

    jobs = callers("parcelo.v1.JobService.")
    assert {name for name, roles in jobs.items() if roles and Role.READER in roles} == {
        "GetJob",
        "ListJobs",
        "GetJobTree",
        "WatchJob",
    }
    assert all(roles == auth.ADMINS or roles == auth.READERS for roles in jobs.values())
    queues = callers("parcelo.v1.QueueService.")
    assert {name for name, roles in queues.items() if roles == auth.READERS} == {"ListQueues", "GetQueue"}
    assert {name for name, roles in queues.items() if roles == auth.ADMINS} == {
        "UpdateQueue",
        "PauseQueue",
        "ResumeQueue",
    }
    workers = callers("parcelo.v1.WorkerService.")
    assert workers.pop("ListWorkers") == auth.READERS, "dashboards list workers"
    assert set(workers.values()) == {auth.WORKERS}
    assert set(callers("parcelo.v1.AdminService.").values()) == {auth.ADMINS}
    assert set(callers("grpc.health.v1.Health.").values()) == {None}
    assert set(callers("grpc.reflection.").values()) == {auth.READERS}


# -- the tokens file -----------------------------------------------------------------------------


def test_a_tokens_file_maps_digests_to_roles() -> None:
    reader_digest = hashlib.sha256(b"reader-secret").hexdigest()
    text = f"""
# comment, then a blank line

admin   admin-secret
  # an indented comment
reader\tsha256:{reader_digest.upper()}
worker worker-secret #trailing
"""
    # Only whole lines are comments: a trailing one is a third field.
    with pytest.raises(StartupError, match=r"^tokens:7: 3 fields, expected ROLE TOKEN$"):
        parse_tokens(text, "tokens")
    tokens = parse_tokens(text.replace(" #trailing", ""), "tokens")
    assert tokens == {
        auth.digest("admin-secret"): Role.ADMIN,
        bytes.fromhex(reader_digest): Role.READER,
        auth.digest("worker-secret"): Role.WORKER,
    }


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("wroker s3cret-token", "unknown role (expected one of admin, reader, worker)"),
        ("s3cret-token admin", "unknown role (expected one of admin, reader, worker)"),
        ("s3cret-token", "the token is missing (expected ROLE TOKEN)"),
        ("admin s3cret-token s3cret-too", "3 fields, expected ROLE TOKEN"),
        ("admin sha256:s3cret-token", "sha256: must be followed by 64 hex digits"),
        (f"admin sha256:{'ab' * 31}", "sha256: must be followed by 64 hex digits"),
        ("admin s3cret-tökén", "the token must be printable ASCII"),
        ("reader first-token", "the same token as line 1"),
    ],
)
def test_a_malformed_line_is_named_by_file_and_number_without_its_contents(line: str, problem: str) -> None:
    with pytest.raises(StartupError) as raised:
        parse_tokens(f"admin first-token\n\n{line}\n", "/etc/parcelo/tokens")
    assert str(raised.value) == f"/etc/parcelo/tokens:3: {problem}"
    assert "s3cret" not in str(raised.value)


def test_an_unreadable_tokens_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"cannot read tokens file .*/missing: No such file or directory"):
        load_tokens(tmp_path / "missing")
    (tmp_path / "binary").write_bytes(b"admin \xff\xfe")
    with pytest.raises(StartupError, match=r"tokens file .*/binary is not UTF-8 text"):
        load_tokens(tmp_path / "binary")


# -- where the coordinator may listen ------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.1.2.3:0", True),
        ("[::1]:50051", True),
        ("[::ffff:127.0.0.1]:1", True),
        ("localhost:50051", True),
        ("LOCALHOST.:50051", True),
        ("unix:/run/parcelo.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.5:50051", False),
        ("[fe80::1]:50051", False),
        ("coordinator.internal:50051", False),
        ("localhost.example.com:50051", False),
        ("", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_host_of() -> None:
    assert [host_of(a) for a in ("[::1]:5", "0.0.0.0:0", "localhost:1", "name")] == [
        "::1",
        "0.0.0.0",
        "localhost",
        "name",
    ]


def test_only_an_unauthenticated_coordinator_is_kept_on_loopback() -> None:
    assert not exposed("127.0.0.1:1", authenticated=False, allow=False)
    assert not exposed("0.0.0.0:1", authenticated=True, allow=False)
    assert exposed("0.0.0.0:1", authenticated=False, allow=True)  # allowed, with a warning
    with pytest.raises(StartupError) as raised:
        exposed("[::]:50051", authenticated=False, allow=False)
    assert "refusing to listen on [::]:50051" in str(raised.value)
    assert "--insecure-listen-anywhere" in str(raised.value)
    assert "\n" not in str(raised.value)


# -- the coordinator's certificates --------------------------------------------------------------


def test_matching_certificate_files_make_a_configuration(pki: Pki) -> None:
    assert certificate_configuration(ServerTLS(pki.server.cert, pki.server.key, pki.ca)) is not None


def test_unusable_certificate_files_are_one_line_naming_them(pki: Pki, tmp_path: Path) -> None:
    def problem(tls: ServerTLS) -> str:
        with pytest.raises(StartupError) as raised:
            certificate_configuration(tls)
        assert "\n" not in str(raised.value)
        return str(raised.value)

    assert problem(ServerTLS(tmp_path / "none.crt", pki.server.key)).startswith(
        f"cannot read --tls-cert {tmp_path / 'none.crt'}"
    )
    mismatch = problem(ServerTLS(pki.server.cert, pki.client.key))
    assert f"--tls-cert {pki.server.cert} and --tls-key {pki.client.key} are not" in mismatch
    assert "KEY_VALUES_MISMATCH" in mismatch
    not_ca = tmp_path / "not-a-ca.pem"
    shutil.copy(pki.server.key, not_ca)
    assert problem(ServerTLS(pki.server.cert, pki.server.key, not_ca)).startswith(
        f"--tls-client-ca {not_ca} holds no PEM CA certificate"
    )


def test_an_encrypted_key_is_refused_without_a_password_prompt(pki: Pki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.server.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"password"),
        )
    )
    with pytest.raises(StartupError, match=r"--tls-key .*encrypted.key is encrypted"):
        certificate_configuration(ServerTLS(pki.server.cert, encrypted))


# -- the client's side ---------------------------------------------------------------------------


def test_a_token_travels_as_bearer_metadata_and_an_unsendable_one_is_not_shown() -> None:
    assert token_metadata(None) == ()
    assert token_metadata("abc.DEF-123") == (("authorization", "Bearer abc.DEF-123"),)
    with pytest.raises(ConfigError):
        token_metadata("")
    for bad in ("two words", "line\nbreak", "tökén"):
        with pytest.raises(ConfigError) as raised:
            token_metadata(bad)
        assert bad not in str(raised.value)


def test_tls_settings_need_a_certificate_and_its_key_together(pki: Pki, tmp_path: Path) -> None:
    assert tls_of(None, None, None) is None
    assert tls_of(pki.ca, None, None) == TLS(ca=pki.ca)
    with pytest.raises(ConfigError, match="needs its key"):
        TLS(ca=pki.ca, cert=pki.client.cert)
    with pytest.raises(ConfigError, match=r"tls: cannot read .*/none\.pem: No such file"):
        TLS(ca=tmp_path / "none.pem").credentials()
    assert TLS(pki.ca, pki.client.cert, pki.client.key).credentials() is not None

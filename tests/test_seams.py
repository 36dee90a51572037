"""The seams between the coordinator's modules: a format-free core, mirrors tied to the proto,
the job state machine, all-or-nothing grants and the store's format version."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from enum import IntEnum
from pathlib import Path

import pytest
from google.protobuf.descriptor import EnumDescriptor
from rocksdict import Options, Rdict

from parcelo.coordinator import codec
from parcelo.coordinator import dispatcher as dispatcher_module
from parcelo.coordinator.core import Core
from parcelo.coordinator.dispatcher import Dispatcher, Session
from parcelo.coordinator.errors import InvalidArgument
from parcelo.coordinator.events import STAT_FIELDS, EventType, Stats
from parcelo.coordinator.jobs import JobStatus
from parcelo.coordinator.leases import Action, LeaseKind, Reject
from parcelo.coordinator.records import FORMAT_KEY
from parcelo.coordinator.store import Store, StoreFormatError
from parcelo.coordinator.tree import Status
from parcelo.testing import BIN
from parcelo.v1 import types_pb2, worker_pb2
from tests.support import raw_spec

ROOT = Path(__file__).resolve().parent.parent

# Imports parcelo.coordinator.core with rocksdict unimportable; argv[1] == "source" loads every
# parcelo.coordinator module from its .py file even where a compiled one is installed.
NO_ROCKSDB = """
import importlib.abc, importlib.util, sys
from pathlib import Path

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "rocksdict" or name.startswith("rocksdict."):
            raise ImportError("rocksdict is blocked by the test")
        if sys.argv[1] == "source" and name.startswith("parcelo.coordinator."):
            source = Path(sys.argv[2]) / (name.rsplit(".", 1)[1] + ".py")
            return importlib.util.spec_from_file_location(name, source)
        return None

sys.meta_path.insert(0, Block())
import parcelo.coordinator.core as core
assert "rocksdict" not in sys.modules
print(core.__file__)
"""


@pytest.mark.parametrize("build", ["installed", "source"])
def test_the_core_imports_without_the_rocksdb_binding(build: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", NO_ROCKSDB, build, str(ROOT / "coordinator")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    if build == "source":
        assert out.stdout.strip().endswith("coordinator/core.py")


@pytest.mark.parametrize(
    ("mirror", "proto", "prefix"),
    [
        (Status, types_pb2.NodeStatus.DESCRIPTOR, "NODE_STATUS_"),
        (JobStatus, types_pb2.JobStatus.DESCRIPTOR, "JOB_STATUS_"),
        (EventType, types_pb2.EventType.DESCRIPTOR, "EVENT_TYPE_"),
        (Action, worker_pb2.DirectiveAction.DESCRIPTOR, "DIRECTIVE_ACTION_"),
        (Reject, worker_pb2.RejectReason.DESCRIPTOR, "REJECT_REASON_"),
        (LeaseKind, worker_pb2.LeaseKind.DESCRIPTOR, "LEASE_KIND_"),
    ],
)
def test_enum_mirrors_match_the_proto(mirror: type[IntEnum], proto: EnumDescriptor, prefix: str) -> None:
    from_proto = {v.name.removeprefix(prefix): v.number for v in proto.values if v.number != 0}
    assert {m.name: m.value for m in mirror} == from_proto


def test_stats_mirror_job_stats() -> None:
    assert tuple(f.name for f in types_pb2.JobStats.DESCRIPTOR.fields) == STAT_FIELDS
    assert Stats._fields == (*STAT_FIELDS, "status")


def _core() -> Core:
    core = Core(fence_limit=1, seed=3)
    core.fences.made_durable(core.fences.pending_limit() or 0)
    return core


def test_every_transition_moves_updated_at() -> None:
    core = _core()
    job, _ = core.create_job(raw_spec(), 1.0)
    assert job.updated_at == job.created_at == 1.0
    core.lease(["default"], 1, 2.0)
    assert (job.status, job.updated_at, job.started_at) == (JobStatus.RUNNING, 2.0, 2.0)
    core.pause(job.id, 3.0)
    assert job.updated_at == 3.0
    core.pause(job.id, 3.5, release=True)  # adds the release
    assert job.updated_at == 3.5 and job.release_requested
    core.resume(job.id, 4.0)
    assert (job.status, job.updated_at) == (JobStatus.RUNNING, 4.0)
    core.cancel(job.id, 5.0)
    assert (job.status, job.updated_at, job.finished_at) == (JobStatus.CANCELLED, 5.0, 5.0)
    record = core.take_changes().jobs[job.id]
    assert record.updated_at.ToNanoseconds() == 5_000_000_000


@pytest.mark.parametrize("name", ["lease_ttl", "leaf_timeout"])
def test_durations_beyond_what_the_wire_carries_are_refused(name: str) -> None:
    spec = raw_spec()
    getattr(spec, name).FromSeconds(60 * 86400)  # 60 days: more than a worker's timer holds
    with pytest.raises(InvalidArgument) as err:
        _core().create_job(spec, 0)
    assert err.value.field == name and "24.8 days" in str(err.value)
    getattr(spec, name).FromSeconds(24 * 86400)
    _core().create_job(spec, 0)


def test_a_lease_that_cannot_be_sent_is_given_back_and_harms_no_other_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core = _core()
    bad, _ = core.create_job(raw_spec(job_id="bad", priority=5), 0)
    good, _ = core.create_job(raw_spec(job_id="good"), 0)
    real = codec.lease_to_proto

    def failing(lease: object, job: object, out: worker_pb2.Lease) -> None:
        if getattr(job, "id", "") == "bad":
            raise ValueError("cannot encode (injected by the test)")
        real(lease, job, out)  # type: ignore[arg-type]

    monkeypatch.setattr(dispatcher_module, "lease_to_proto", failing)

    async def one_round() -> worker_pb2.WorkResponse:
        dispatcher = Dispatcher(core)
        session = Session(worker_id="w", queues=("default",))
        dispatcher.add(session)
        dispatcher.credit(session, 6)
        response = await asyncio.wait_for(session.out.get(), 5)
        assert response is not None
        return response

    response = asyncio.run(one_round())
    # The bad job comes first (higher priority) and fails to encode: its leases are given back...
    assert len(core.leases) == core.leases.count("good") == len(response.grant.leases) > 0
    assert {lease.job_id for lease in response.grant.leases} == {"good"}
    assert [job.job_id for job in response.grant.jobs] == ["good"]
    assert core.stats(bad).active_leases == 0
    leaves = [n for n in bad.tree.walk() if n.is_leaf]
    assert leaves and all(n.status is Status.PENDING and n.attempts == 0 and n.lease is None for n in leaves)
    # ...and the good job's leases are live and answer heartbeats.
    assert core.stats(good).active_leases == len(response.grant.leases)


def test_a_data_dir_in_another_format_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "new")
    store.write([(FORMAT_KEY, (1).to_bytes(4, "big"))])
    store.close()
    with pytest.raises(StoreFormatError, match="store format 1; this coordinator reads formats 2 and 3"):
        Store(tmp_path / "new")
    # A data dir written before the format key existed is format 1 too.
    old = Rdict(str(tmp_path / "old"), Options(raw_mode=True))
    old[b"Jjob-1"] = types_pb2.Job(id="job-1").SerializeToString()
    old.close()
    with pytest.raises(StoreFormatError, match="store format 1"):
        Store(tmp_path / "old")
    # The daemon says so in one line and exits 1.
    out = subprocess.run(
        [str(BIN / "parcelo-coordinator"), "--data-dir", str(tmp_path / "new"), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1 and "error: data dir" in out.stderr and "store format 1" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [
                str(BIN / "parcelo-coordinator"),
                "--data-dir",
                str(tmp_path / "d"),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 1 and f"error: cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr

"""Observability, end to end: metrics scraped during a job, the JSON API against gRPC, reflection and
health, the worker registry, JSON logs, the flags of the HTTP port, and traces from a job to its
handler runs. Real coordinator processes (the browser's view is tests/test_dashboard.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pool, json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from parcelo import JobOptions, Worker
from parcelo.logs import JsonFormatter
from parcelo.testing import BIN, CoordinatorProcess, Proc, start_worker, wait_for
from parcelo.tracing import TRACEPARENT_RE, TracingError, configure_from_env
from parcelo.v1 import jobs_pb2, types_pb2, worker_pb2
from tests.support import RawWorker, eventually, reference_leaves, running_worker

pytestmark = pytest.mark.integration


# -- HTTP helpers ---------------------------------------------------------------------------------


def request(url: str, *, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    """(status, decoded JSON body) of one HTTP request."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def scrape(coord: CoordinatorProcess) -> str:
    with urllib.request.urlopen(f"{coord.http_url}/metrics", timeout=5) as response:
        return str(response.read().decode())


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture
def http_coordinator(
    make_coordinator: type[CoordinatorProcess], tmp_path: Path, log_dir: Path
) -> CoordinatorProcess:
    return make_coordinator(tmp_path / "data", log_dir, http=True).start()


# -- metrics --------------------------------------------------------------------------------------


def test_metrics_move_as_leases_complete_and_expire(http_coordinator: CoordinatorProcess) -> None:
    coord = http_coordinator
    leaves = len(reference_leaves(0, 1000, 100))
    # Long enough to see the leases held (the depth gauges are read at most once a second).
    job = coord.create_job(JobOptions(0, 1000, max_range_size=100, lease_ttl=timedelta(seconds=3)))

    def scraped(want: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> Any:
        def check() -> str:
            text = scrape(coord)
            return text if all(value(text, n, **dict(labels)) == v for (n, labels), v in want.items()) else ""

        return check

    queue = (("queue", "default"),)
    wait_for(scraped({("parcelo_pending_leaves", queue): leaves}), 20, f"{leaves} pending leaves")
    worker = RawWorker(coord.channel, worker_id="scraped")
    try:
        held = worker.lease(4)
        assert not worker.complete([held[0].fence, held[1].fence]).rejected
        wait_for(
            scraped(
                {
                    ("parcelo_leases_granted_total", ()): 4,
                    ("parcelo_leases_completed_total", ()): 2,
                    ("parcelo_pending_leaves", queue): leaves - 4,
                    ("parcelo_running_leases", queue): 2,
                    ("parcelo_job_pending_leaves", (("job_id", job.id),)): leaves - 4,
                    ("parcelo_job_running_leases", (("job_id", job.id),)): 2,
                    ("parcelo_workers_connected", ()): 1,
                }
            ),
            20,
            "the counters and gauges after two completions",
        )
        # The two leases left are never heartbeated: they expire, and their leaves wait again.
        wait_for(
            scraped(
                {
                    ("parcelo_leases_expired_total", (("cause", "heartbeat"),)): 2,
                    ("parcelo_pending_leaves", queue): leaves - 2,
                    ("parcelo_running_leases", queue): 0,
                }
            ),
            20,
            "two expired leases back among the pending leaves",
        )
        late = worker.complete([held[2].fence])
        assert [r.reason for r in late.rejected] == [worker_pb2.REJECT_REASON_STALE_FENCE]
        text = wait_for(
            scraped({("parcelo_leases_rejected_total", (("reason", "stale_fence"),)): 1}), 20, "a rejection"
        )
    finally:
        worker.close()
    for name in ("parcelo_lease_grant_latency_seconds_count", "parcelo_commit_batch_ops_count"):
        assert value(text, name) >= 1, name
    assert value(text, "parcelo_data_dir_bytes") > 0


def test_handler_durations_reported_by_workers_are_a_histogram(
    http_coordinator: CoordinatorProcess, log_dir: Path, procs: list[Proc]
) -> None:
    coord = http_coordinator
    job = coord.create_job(JobOptions(0, 800, max_range_size=100, params={"sleep": 0.02}))
    procs.append(start_worker(coord.target, "tests.handlers:nap", log_dir))
    coord.wait_status(job.id, {types_pb2.JOB_STATUS_COMPLETED})

    def eight() -> str:
        text = scrape(coord)
        return text if value(text, "parcelo_handler_duration_seconds_count") == 8 else ""

    text = wait_for(eight, 20, "eight handler durations")
    # Each ran about 20 ms: none in the buckets below 10 ms, all by 100 ms.
    assert value(text, "parcelo_handler_duration_seconds_bucket", le="0.01") == 0
    assert value(text, "parcelo_handler_duration_seconds_bucket", le="0.1") == 8
    assert 0.15 < value(text, "parcelo_handler_duration_seconds_sum") < 0.8


# -- the JSON API ---------------------------------------------------------------------------------


def test_the_json_api_answers_like_grpc(http_coordinator: CoordinatorProcess) -> None:
    coord = http_coordinator
    api = f"{coord.http_url}/api/v1"
    assert request(f"{coord.http_url}/healthz") == (200, {"status": "alive"})
    assert request(f"{coord.http_url}/readyz") == (200, {"status": "SERVING"})
    spec = {
        "range": {"start": "0", "end": "1000"},
        "max_range_size": "100",
        "job_id": "api",
        "labels": {"a": "b"},
    }
    status, created = request(f"{api}/jobs", method="POST", body=spec)
    assert status == 200 and created["status"] == "JOB_STATUS_PENDING"
    assert request(f"{api}/jobs", method="POST", body=spec)[1] == created, "idempotent, as CreateJob"

    def same(body: Any, message: Any) -> None:
        assert json_format.ParseDict(body, type(message)()) == message

    same(request(f"{api}/jobs/api")[1], coord.get_job("api"))
    same(
        request(f"{api}/jobs?status=pending&queue=default")[1],
        coord.jobs.ListJobs(
            jobs_pb2.ListJobsRequest(statuses=[types_pb2.JOB_STATUS_PENDING], queue="default")
        ),
    )
    same(
        request(f"{api}/jobs/api/tree?depth=3")[1],
        coord.jobs.GetJobTree(jobs_pb2.GetJobTreeRequest(job_id="api", max_depth=3)),
    )
    assert request(f"{api}/queues")[1] == {
        "queues": [
            {
                "queue": "default",
                "pending_leaves": str(len(reference_leaves(0, 1000, 100))),
                "running_leases": "0",
                "jobs": {
                    "pending": 1,
                    "running": 0,
                    "paused": 0,
                    "completed": 0,
                    "failed": 0,
                    "cancelled": 0,
                },
                "max_concurrency": 0,
                "max_leases_per_second": 0.0,
                "paused": False,
            }
        ]
    }

    # Errors: the gRPC code in JSON, with the HTTP status that fits.
    assert request(f"{api}/jobs/nope") == (404, {"code": "NOT_FOUND", "message": "job 'nope' not found"})
    assert request(f"{api}/jobs", method="POST", body={})[1] == {
        "code": "INVALID_ARGUMENT",
        "message": "range: is required",
    }
    assert request(f"{api}/jobs", method="POST", body={"range": {"start": "5", "end": "5"}})[0] == 400
    assert request(f"{api}/jobs?status=sleeping")[0] == 400
    assert request(f"{api}/nothing")[1]["code"] == "NOT_FOUND"
    changed = dict(spec, max_range_size="10")
    assert request(f"{api}/jobs", method="POST", body=changed)[0] == 409

    # Steering, as the admin RPCs.
    assert request(f"{api}/jobs/api/pause", method="POST")[1]["status"] == "JOB_STATUS_PAUSED"
    assert request(f"{api}/jobs/api/resume", method="POST")[1]["status"] == "JOB_STATUS_PENDING"
    cancelled = request(f"{api}/jobs/api/cancel", method="POST", body={"reason": "enough"})[1]
    assert (cancelled["status"], cancelled["reason"]) == ("JOB_STATUS_CANCELLED", "enough")
    status, refused = request(f"{api}/jobs/api/resume", method="POST")
    assert (status, refused["code"]) == (409, "FAILED_PRECONDITION")
    assert request(f"{api}/jobs/api/retry", method="POST")[0] == 409

    # Events: the retained ones at once, as WatchJob replays them; with follow, server-sent events.
    watched = list(coord.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id="api"), timeout=10))
    status, page = request(f"{api}/jobs/api/events")
    assert status == 200 and page["more"] is False
    assert [json_format.ParseDict(e, types_pb2.JobEvent()) for e in page["events"]] == watched
    assert page["next_after"] == str(watched[-1].seq)
    assert request(f"{api}/jobs/api/events?after={watched[-1].seq}")[1]["events"] == []
    only = request(f"{api}/jobs/api/events?types=JOB_CANCELLED")[1]["events"]
    assert [e["type"] for e in only] == ["EVENT_TYPE_JOB_CANCELLED"]
    streamed = list(sse(f"{api}/jobs/api/events?follow=1&after=1", len(watched) - 1))
    assert [json_format.ParseDict(e, types_pb2.JobEvent()) for e in streamed] == watched[1:]
    assert request(f"{api}/jobs/nope/events?follow=1")[0] == 404

    assert request(f"{api}/jobs/api", method="DELETE") == (200, {})
    assert request(f"{api}/jobs/api")[0] == 404


def sse(url: str, count: int) -> Iterator[Any]:
    """The first ``count`` events of a server-sent event stream, each ``data:`` decoded."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        seen = 0
        ids: list[str] = []
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                ids.append(line[4:])
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert ids[-1] == event["seq"], "each event's id is its seq"
                yield event
                seen += 1
                if seen == count:
                    return


# -- reflection, health, the worker registry, logs -----------------------------------------------


def test_reflection_lists_the_services_and_health_says_serving(coordinator: CoordinatorProcess) -> None:
    database = ProtoReflectionDescriptorDatabase(coordinator.channel)
    services = set(database.get_services())
    assert {
        "parcelo.v1.JobService",
        "parcelo.v1.WorkerService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    # What grpcurl does without the .proto files: the methods and their messages, from the server.
    pool = descriptor_pool.DescriptorPool(database)
    jobs = pool.FindServiceByName("parcelo.v1.JobService")
    assert {"CreateJob", "GetJob", "WatchJob"} <= {m.name for m in jobs.methods}
    assert "traceparent" in pool.FindMessageTypeByName("parcelo.v1.Job").fields_by_name
    workers = pool.FindServiceByName("parcelo.v1.WorkerService")
    assert workers.methods_by_name["ListWorkers"].output_type.name == "ListWorkersResponse"
    health = health_pb2_grpc.HealthStub(coordinator.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING


def parcelo(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "parcelo"), "--target", target, *args], capture_output=True, text=True, timeout=30
    )


def test_the_worker_registry_lists_connected_workers_and_logs_are_json_lines(
    make_coordinator: type[CoordinatorProcess], tmp_path: Path, log_dir: Path, procs: list[Proc]
) -> None:
    coord = make_coordinator(tmp_path / "data", log_dir, extra=["--log-format", "json"], http=True).start()
    # A short TTL: the worker heartbeats every half second.
    options = JobOptions(
        0, 100_000, max_range_size=100, params={"sleep": 0.05}, lease_ttl=timedelta(seconds=1.5)
    )
    job = coord.create_job(options)
    flags = [
        "--worker-id",
        "w-1",
        "--concurrency",
        "3",
        "--queue",
        "default",
        "--queue",
        "gpu",
        "--log-format",
        "json",
    ]
    worker = start_worker(coord.target, "tests.handlers:nap", log_dir, *flags)
    procs.append(worker)

    def listed() -> list[Any]:
        out = parcelo(coord.target, "worker", "list", "--json")
        assert out.returncode == 0, out.stderr
        found = json.loads(out.stdout)
        ready = (
            found
            # The protobuf JSON mapping leaves zero counts out: absent until the first is counted.
            and int(found[0].get("leaves_completed", 0))
            and found[0].get("leases_held")
            and "last_heartbeat_at" in found[0]
        )
        return found if ready else []

    [info] = wait_for(listed, 20, "the worker in `parcelo worker list`")
    assert (info["worker_id"], info["queues"], info["concurrency"], info["streams"]) == (
        "w-1",
        ["default", "gpu"],
        3,
        1,
    )
    assert info["sdk"].startswith("parcelo-python/") and info["address"].startswith("ipv4:127.0.0.1:")
    assert info["connected_at"] and info["last_heartbeat_at"]
    over_http = request(f"{coord.http_url}/api/v1/workers")[1]["workers"]
    assert [w["worker_id"] for w in over_http] == ["w-1"]
    table = parcelo(coord.target, "worker", "list")
    assert table.returncode == 0 and "w-1" in table.stdout and "default,gpu" in table.stdout

    coord.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id), timeout=10)
    assert worker.terminate() == 0
    wait_for(
        lambda: json.loads(parcelo(coord.target, "worker", "list", "--json").stdout) == [], 20, "no workers"
    )
    assert coord.stop() == 0
    # Every line of both logs is one JSON object; the ids are fields of their own.
    assert coord.proc is not None
    lines = [json.loads(line) for line in coord.proc.output().splitlines() if line.strip()]
    connected = [line for line in lines if line["message"].startswith("worker w-1 connected")]
    assert connected and connected[0]["worker_id"] == "w-1" and connected[0]["level"] == "INFO"
    worker_lines = [json.loads(line) for line in worker.output().splitlines() if line.strip()]
    assert any(line["message"].startswith("connected to") for line in worker_lines)


def test_a_json_log_line_carries_the_ids_of_its_call() -> None:
    record = logging.LogRecord("parcelo.worker", logging.INFO, __file__, 1, "leaf %s failed", ("x",), None)
    record.__dict__.update({"job_id": "j", "fence": 7, "worker_id": "w"})
    line = json.loads(JsonFormatter().format(record))
    assert {k: line[k] for k in ("level", "logger", "message", "job_id", "fence", "worker_id")} == {
        "level": "INFO",
        "logger": "parcelo.worker",
        "message": "leaf x failed",
        "job_id": "j",
        "fence": 7,
        "worker_id": "w",
    }
    assert line["time"].endswith("Z")


# -- flags of the HTTP port -----------------------------------------------------------------------


def coordinator_run(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = [
        str(BIN / "parcelo-coordinator"),
        "--data-dir",
        str(tmp_path / "data"),
        "--listen",
        "127.0.0.1:0",
        *flags,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_a_port_in_use_names_the_flag_and_metrics_port_points_to_the_http_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = coordinator_run(tmp_path, "--http-listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: --http-listen 127.0.0.1:{port}: cannot listen")
    )
    gone = coordinator_run(tmp_path, "--metrics-port", "9464")
    assert gone.returncode == 2
    assert (
        "--metrics-port (or PARCELO_METRICS_PORT) is gone" in gone.stderr and "--http-listen" in gone.stderr
    )


# -- traces ---------------------------------------------------------------------------------------


def test_tracing_is_off_unless_an_exporter_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert configure_from_env("t") is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert configure_from_env("t") is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert configure_from_env("t") is None
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "carrier-pigeon")
    with pytest.raises(TracingError, match="no span exporter 'carrier-pigeon'"):
        configure_from_env("t")
    # Without a provider of its own or a global one, a worker makes no spans at all.
    assert Worker("127.0.0.1:1", lambda r, c: None)._spans is None


def test_a_handler_span_is_a_child_of_its_jobs_trace(
    make_coordinator: type[CoordinatorProcess], tmp_path: Path, log_dir: Path
) -> None:
    otel = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "coordinator-under-test",
    }
    coord = make_coordinator(tmp_path / "data", log_dir, env=otel).start()
    job = coord.create_job(JobOptions(0, 400, max_range_size=100))
    parsed = TRACEPARENT_RE.match(job.traceparent)
    assert parsed, job.traceparent
    trace_id, span_id = parsed.group(1), parsed.group(2)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def handler_spans() -> list[Any]:
        return [s for s in exporter.get_finished_spans() if s.name == "parcelo.handler"]

    async def work() -> None:
        worker = Worker(coord.target, lambda r, c: None, concurrency=2, tracer_provider=provider)
        async with running_worker(worker):
            await eventually(lambda: len(handler_spans()) == 4, "a span per leaf", within=20)

    asyncio.run(work())
    spans = handler_spans()
    assert sorted(s.attributes["parcelo.range.start"] for s in spans) == ["0", "100", "200", "300"]
    for span in spans:
        assert span.parent is not None and span.parent.span_id == int(span_id, 16)
        assert span.context.trace_id == int(trace_id, 16)
        assert span.attributes["parcelo.job_id"] == job.id
        assert span.attributes["parcelo.outcome"] == "completed"
    # The parent is the coordinator's span of the CreateJob call, exported by its console exporter.
    assert coord.proc is not None

    def exported() -> bool:
        text = coord.proc.output() if coord.proc else ""
        return f'"span_id": "0x{span_id}"' in text and '"name": "parcelo.v1.JobService/CreateJob"' in text

    wait_for(exported, 20, "the CreateJob span in the coordinator's output")
    assert coord.stop() == 0
    assert '"service.name": "coordinator-under-test"' in coord.proc.output()

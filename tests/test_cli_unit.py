"""Unit tests of the client library and the admin CLI that need no coordinator.

Two kinds of tests live here:

* pure tests of parsing and rendering (params, labels, leaf counts, rates, tables, trees);
* CLI-formatting tests, which run the CLI against a tiny in-process ``JobService`` with canned
  answers. They check what the CLI prints and how it exits, never the coordinator's behaviour.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any, NoReturn

import grpc
import pytest
from click.testing import CliRunner, Result
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console

from parcelo import progress
from parcelo.cli import cli, exit_code_for, parse_labels
from parcelo.client import OVERLAPS, Client
from parcelo.errors import ConfigError, NotFound
from parcelo.options import encode_params
from parcelo.v1 import jobs_pb2, jobs_pb2_grpc, schedules_pb2, types_pb2


def _job(job_id: str = "j1", status: int = types_pb2.JOB_STATUS_RUNNING, done: int = 0) -> types_pb2.Job:
    return types_pb2.Job(
        id=job_id,
        status=status,  # type: ignore[arg-type]
        spec=types_pb2.JobSpec(range=types_pb2.Range(start=0, end=1000), max_range_size=100),
        stats=types_pb2.JobStats(range_total=1000, range_processed=done, total_nodes=3, done_nodes=1),
        created_at=Timestamp(seconds=1_700_000_000),
    )


def _render(renderable: Any) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


# --- pure parts -------------------------------------------------------------------------------


def test_encode_params() -> None:
    assert encode_params(None) == ""
    assert encode_params({"a": [1, 2]}) == '{"a":[1,2]}'
    assert encode_params(' {"a": 1} ') == ' {"a": 1} '
    with pytest.raises(ConfigError):
        encode_params("{nope")
    with pytest.raises(ConfigError):
        encode_params({"a": object()})


def test_parse_labels() -> None:
    assert parse_labels(("a=1", "b=x=y", "c=")) == {"a": "1", "b": "x=y", "c": ""}


@pytest.mark.parametrize("width,size", [(1, 1), (10, 3), (1000, 100), (1001, 100), (12345, 7)])
def test_count_leaves_matches_splitting_rule(width: int, size: int) -> None:
    leaves, stack = 0, [(0, width)]
    while stack:
        start, end = stack.pop()
        if end - start <= size:
            leaves += 1
        else:
            mid = start + (end - start) // 2
            stack += [(start, mid), (mid, end)]
    assert progress.count_leaves(width, size) == leaves


def test_count_leaves_full_u64_is_fast() -> None:
    assert progress.count_leaves(2**64 - 1, 1) == 2**64 - 1


def test_small_formatters() -> None:
    assert progress.compact(1_234_567) == "1.23M"
    assert progress.compact(12) == "12"
    assert progress.compact(2.5) == "2.5"
    assert progress.format_duration(4.25) == "4.2s"
    assert progress.format_duration(3725) == "1h02m05s"
    assert progress.job_status_name(types_pb2.JOB_STATUS_CANCELLED) == "cancelled"
    assert progress.job_status_name(99) == "unknown"
    assert progress.format_time(Timestamp()) == "-"


def test_exit_codes_and_final_line() -> None:
    done = _job(status=types_pb2.JOB_STATUS_COMPLETED)
    done.started_at.seconds = 100
    done.finished_at.seconds = 190
    assert exit_code_for(done) == 0
    assert progress.final_line(done) == "job j1 completed in 1m30s"
    failed = _job(status=types_pb2.JOB_STATUS_FAILED)
    failed.reason = "leaf [0, 100) failed"
    assert exit_code_for(failed) == 1
    assert progress.final_line(failed) == "job j1 failed: leaf [0, 100) failed"
    assert exit_code_for(_job(status=types_pb2.JOB_STATUS_CANCELLED)) == 1


def test_watch_state_rates_use_event_time() -> None:
    state = progress.WatchState(_job(), now=0.0)
    for second, done in ((100, 0), (101, 100), (102, 200)):
        state.update_event(
            types_pb2.JobEvent(
                type=types_pb2.EVENT_TYPE_STATS_UPDATED,
                time=Timestamp(seconds=second),
                stats=types_pb2.JobStats(range_total=1000, range_processed=done),
            ),
            now=5000.0,  # replay speed must not matter
        )
    assert state.ids_per_second() == pytest.approx(100.0)
    # 1000 ids with leaves of at most 100 split into 16 leaves of 62 or 63 ids.
    assert state.leaves_per_second() == pytest.approx(1.6)
    eta = state.eta()
    assert eta is not None and eta.total_seconds() == pytest.approx(8.0)
    text = _render(state.render())
    assert "20.0%" in text and "100 ids/s" in text and "ETA 8.0s" in text
    state.update_event(
        types_pb2.JobEvent(type=types_pb2.EVENT_TYPE_JOB_PAUSED, status=types_pb2.JOB_STATUS_PAUSED),
        now=5001.0,
    )
    assert state.ids_per_second() == 0.0 and state.eta() is None


def test_renderers_show_the_essentials() -> None:
    job = _job(done=250)
    job.reason = "why not"
    summary = _render(progress.job_summary(job))
    for needle in ("j1", "running", "[0, 1000)", "25.0%", "3 total", "why not"):
        assert needle in summary
    assert "j1" in _render(progress.jobs_table([job]))
    leaf = types_pb2.TreeNode(
        range=types_pb2.Range(start=0, end=500),
        status=types_pb2.NODE_STATUS_ERROR,
        is_leaf=True,
        attempts=3,
        last_error="boom",
        cursor=42,
    )
    held = types_pb2.TreeNode(
        range=types_pb2.Range(start=500, end=1000),
        status=types_pb2.NODE_STATUS_RUNNING,
        is_leaf=True,
        attempts=1,
        worker_id="host-a:77",
        message="row 42",
    )
    root = types_pb2.TreeNode(
        range=types_pb2.Range(start=0, end=1000), children=[leaf, held], truncated=False
    )
    tree = _render(progress.job_tree(jobs_pb2.GetJobTreeResponse(job=job, root=root)))
    assert "[0, 1000)" in tree and "attempts=3" in tree and "cursor=42" in tree and "boom" in tree
    assert "held by host-a:77" in tree and "progress: row 42" in tree
    line = progress.event_line(
        types_pb2.JobEvent(seq=7, type=types_pb2.EVENT_TYPE_NODE_FAILED, attempt=2, message="x")
    )
    assert "node_failed" in line and "attempt=2" in line and line.lstrip().startswith("7")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--params", "{x"], "error: --params is not valid JSON:"),
        (["--label", "novalue"], "error: --label expects KEY=VALUE"),
        (["--deadline", "tomorrow"], "error: --deadline is not an ISO 8601 time"),
        (["--end", "0"], "error: --end must be greater than --start"),
    ],
)
def test_create_rejects_bad_input_before_calling(args: list[str], message: str) -> None:
    base = ["--target", "127.0.0.1:1", "job", "create", "--start", "0", "--end", "10"]
    base += ["--max-range-size", "1"]
    result = CliRunner().invoke(cli, base + args)
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(message)


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "error: give exactly one of --cron and --every"),
        (["--cron", "@daily", "--every", "2s"], "error: give exactly one of --cron and --every"),
        (["--every", "soon"], "error: --every: 'soon' is not a duration"),
        (["--every", "2s", "--end", "0"], "error: --end must be greater than --start"),
    ],
)
def test_schedule_create_rejects_bad_input_before_calling(args: list[str], message: str) -> None:
    base = ["--target", "127.0.0.1:1", "schedule", "create", "s", "--start", "0", "--end", "10"]
    base += ["--max-range-size", "1"]
    result = CliRunner().invoke(cli, base + args)
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(message)


def test_overlap_names_mirror_the_proto_enum() -> None:
    assert OVERLAPS == {
        "skip": schedules_pb2.OVERLAP_SKIP,
        "allow": schedules_pb2.OVERLAP_ALLOW,
        "cancel-previous": schedules_pb2.OVERLAP_CANCEL_PREVIOUS,
    }


def test_schedule_create_takes_every_job_create_option_but_the_ids() -> None:
    def names(command: Any) -> set[str]:
        return {p.name for p in command.params}

    job_create = cli.commands["job"].commands["create"]  # type: ignore[attr-defined]
    schedule_create = cli.commands["schedule"].commands["create"]  # type: ignore[attr-defined]
    assert names(job_create) - names(schedule_create) == {"job_id", "request_id"}


# --- CLI-formatting tests against a canned in-process JobService -------------------------------


class _FakeJobs(jobs_pb2_grpc.JobServiceServicer):
    """Canned answers: job "done" completed, "bad" failed, "slow" runs for ever; others unknown."""

    def __init__(self, with_watch: bool = True) -> None:
        self.with_watch = with_watch
        self.jobs = {
            "done": _job("done", types_pb2.JOB_STATUS_COMPLETED, 1000),
            "bad": _job("bad", types_pb2.JOB_STATUS_FAILED),
            "slow": _job("slow"),
        }
        self.jobs["bad"].reason = "leaf [0, 100) failed"

    def _find(self, job_id: str, context: Any) -> types_pb2.Job:
        if job_id not in self.jobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {job_id!r} not found")
        return self.jobs[job_id]

    def GetJob(self, request: Any, context: Any) -> types_pb2.Job:
        return self._find(request.job_id, context)

    def ListJobs(self, request: Any, context: Any) -> jobs_pb2.ListJobsResponse:
        # One job per page, to prove the client follows page tokens.
        ordered = sorted(self.jobs)
        index = int(request.page_token or 0)
        token = str(index + 1) if index + 1 < len(ordered) else ""
        return jobs_pb2.ListJobsResponse(jobs=[self.jobs[ordered[index]]], next_page_token=token)

    def WatchJob(self, request: Any, context: Any) -> Iterator[types_pb2.JobEvent]:
        if not self.with_watch:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        job = self._find(request.job_id, context)
        yield types_pb2.JobEvent(seq=1, type=types_pb2.EVENT_TYPE_JOB_CREATED, job_id=job.id)
        if job.status == types_pb2.JOB_STATUS_COMPLETED:
            yield types_pb2.JobEvent(
                seq=2, type=types_pb2.EVENT_TYPE_JOB_COMPLETED, status=job.status, stats=job.stats
            )
            return
        while context.is_active():
            if job.status == types_pb2.JOB_STATUS_CANCELLED:
                yield types_pb2.JobEvent(seq=2, type=types_pb2.EVENT_TYPE_JOB_CANCELLED, status=job.status)
                return
            time.sleep(0.02)

    def _unimplemented(self, request: Any, context: Any) -> NoReturn:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake")
        raise AssertionError("abort raises")

    CreateJob = PauseJob = ResumeJob = CancelJob = DeleteJob = RetryFailed = GetJobTree = UpdateJob = (
        _unimplemented
    )


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[Any] = []

    def start(servicer: _FakeJobs) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        jobs_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


def _run(target: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--target", target, *args])


def test_cli_formatting_not_found_is_one_line(serve: Any) -> None:
    result = _run(serve(_FakeJobs()), "job", "get", "x")
    assert result.exit_code == 1
    assert result.stderr == "error: NOT_FOUND: job 'x' not found\n"


def test_cli_formatting_unreachable() -> None:
    result = _run("127.0.0.1:1", "job", "list")
    assert result.exit_code == 1
    assert result.stderr == "error: cannot reach coordinator at 127.0.0.1:1 (UNAVAILABLE)\n"


def test_cli_formatting_json_uses_proto_names(serve: Any) -> None:
    target = serve(_FakeJobs())
    got = json.loads(_run(target, "job", "get", "done", "--json").stdout)
    assert got["id"] == "done" and got["spec"]["max_range_size"] == "100"
    listed = json.loads(_run(target, "job", "list", "--json").stdout)
    assert [j["id"] for j in listed] == ["bad", "done", "slow"]
    assert [j["id"] for j in json.loads(_run(target, "job", "list", "--json", "--limit", "2").stdout)] == [
        "bad",
        "done",
    ]
    lines = _run(target, "job", "events", "done", "--json").stdout.splitlines()
    types = [json.loads(line)["type"] for line in lines]
    assert types == ["EVENT_TYPE_JOB_CREATED", "EVENT_TYPE_JOB_COMPLETED"]


def test_cli_formatting_wait_exit_codes(serve: Any) -> None:
    target = serve(_FakeJobs())
    done = _run(target, "job", "wait", "done")
    assert (done.exit_code, done.stdout) == (0, "job done completed\n")
    bad = _run(target, "job", "wait", "bad")
    assert bad.exit_code == 1 and "failed: leaf [0, 100) failed" in bad.stdout
    slow = _run(target, "job", "wait", "slow", "--timeout", "0.3")
    assert slow.exit_code == 3
    assert slow.stderr.startswith("error: timed out")


def test_cli_formatting_watch_polls_without_watchjob(serve: Any) -> None:
    fake = _FakeJobs(with_watch=False)
    target = serve(fake)
    result = _run(target, "job", "watch", "done")
    assert result.exit_code == 0 and "job done completed" in result.stdout
    with Client(target) as client:
        fake.jobs["slow"].status = types_pb2.JOB_STATUS_CANCELLED
        assert client.wait("slow", timeout=5).status == types_pb2.JOB_STATUS_CANCELLED
        with pytest.raises(NotFound):
            client.wait("missing", timeout=5)


@pytest.mark.parametrize("with_watch", [True, False], ids=["stream", "polling"])
def test_cli_formatting_wait_and_watch_see_the_end(serve: Any, with_watch: bool) -> None:
    fake = _FakeJobs(with_watch=with_watch)
    target = serve(fake)

    def cancel_soon() -> threading.Timer:
        fake.jobs["slow"].status = types_pb2.JOB_STATUS_RUNNING
        timer = threading.Timer(
            0.3, lambda: setattr(fake.jobs["slow"], "status", types_pb2.JOB_STATUS_CANCELLED)
        )
        timer.start()
        return timer

    cancel_soon()
    with Client(target) as client:
        assert client.wait("slow", timeout=5).status == types_pb2.JOB_STATUS_CANCELLED
    cancel_soon()
    result = _run(target, "job", "watch", "slow")
    assert result.exit_code == 1 and "job slow cancelled" in result.stdout
    # The final line starts a line of its own after the live view.
    assert result.stdout.splitlines()[-1] == "job slow cancelled"

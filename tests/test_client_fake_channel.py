"""The admin client over grpc_testing's fake channel: the test plays the coordinator, one call at a time.

``Client(channel=...)`` takes any channel; grpc_testing's hands each call the client makes to the
test, which reads the request and answers with a response or a status. That pins down what the
client itself does: the requests it builds from Python arguments, how it maps status codes to
``parcelo.errors``, and how ``wait`` follows and closes a watch stream, without a server.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import grpc
import grpc_testing  # type: ignore[import-untyped]
import pytest

from parcelo import errors
from parcelo.client import Client
from parcelo.v1 import jobs_pb2, types_pb2

T = TypeVar("T")

SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
BOUND = 5.0
"""Seconds any step may take: the fake channel never times a call out by itself."""


def method(name: str) -> Any:
    return SERVICE.methods_by_name[name]


class InThread(Generic[T]):
    """``fn()`` running in a daemon thread (a blocking client call, or the fake server's wait for one)."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._out: queue.Queue[tuple[bool, Any]] = queue.Queue()
        threading.Thread(target=self._run, args=(fn,), daemon=True).start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            self._out.put((True, fn()))
        except BaseException as err:
            self._out.put((False, err))

    def result(self) -> T:
        """What ``fn`` returned; what it raised is raised here. Fails after :data:`BOUND` seconds."""
        try:
            ok, value = self._out.get(timeout=BOUND)
        except queue.Empty:
            raise AssertionError(f"no result within {BOUND} s") from None
        if not ok:
            raise value
        return value


def _as_received(request: Any) -> Any:
    """A copy of ``request`` as it was when sent: the fake channel hands over the caller's own object,
    which the caller may change afterwards (a real channel serialises it at once)."""
    copy = type(request)()
    copy.CopyFrom(request)
    return copy


class FakeCoordinator:
    """The server side of a grpc_testing channel, as seen by the test."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def unary(self, name: str) -> tuple[Any, Any]:
        """The next unary call to ``name``: its request and the handle to answer it with."""
        _, request, rpc = InThread(lambda: self._channel.take_unary_unary(method(name))).result()
        return _as_received(request), rpc

    def stream(self, name: str) -> tuple[Any, Any]:
        """The next server-streaming call to ``name``: its request and the handle to answer it with."""
        _, request, rpc = InThread(lambda: self._channel.take_unary_stream(method(name))).result()
        return _as_received(request), rpc

    def answer(self, name: str, response: Any) -> Any:
        """Answer the next unary call to ``name`` with ``response``; returns its request."""
        request, rpc = self.unary(name)
        rpc.terminate(response, (), grpc.StatusCode.OK, "")
        return request


@pytest.fixture
def fake() -> Iterator[tuple[Client, FakeCoordinator]]:
    channel = grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())
    with Client("unused:1", channel=channel, timeout=BOUND) as client:
        yield client, FakeCoordinator(channel)


def job(job_id: str, status: int) -> types_pb2.Job:
    return types_pb2.Job(id=job_id, status=status)  # type: ignore[arg-type]


RUNNING = types_pb2.JOB_STATUS_RUNNING
COMPLETED = types_pb2.JOB_STATUS_COMPLETED


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.INTERNAL, errors.RpcError),
    ],
)
def test_a_status_code_becomes_its_parcelo_error(
    fake: tuple[Client, FakeCoordinator], code: grpc.StatusCode, error: type[errors.RpcError]
) -> None:
    client, server = fake
    call = InThread(lambda: client.get_job("j1"))
    request, rpc = server.unary("GetJob")
    assert request == jobs_pb2.GetJobRequest(job_id="j1")
    rpc.terminate(None, (), code, "job_id: says the server")
    with pytest.raises(errors.ParceloError) as raised:
        call.result()
    assert type(raised.value) is error  # the most precise class, the root for unmapped codes
    assert (raised.value.code, raised.value.message) == (code, "job_id: says the server")
    assert str(raised.value) == f"{code.name}: job_id: says the server"


def test_an_error_without_details_is_named_by_its_code(fake: tuple[Client, FakeCoordinator]) -> None:
    client, server = fake
    call = InThread(lambda: client.resume_job("j1"))
    _, rpc = server.unary("ResumeJob")
    rpc.terminate(None, (), grpc.StatusCode.FAILED_PRECONDITION, "")
    with pytest.raises(errors.FailedPrecondition) as raised:
        call.result()
    assert raised.value.message == "FAILED_PRECONDITION"


def test_requests_carry_the_arguments_and_answers_come_back_unchanged(
    fake: tuple[Client, FakeCoordinator],
) -> None:
    client, server = fake
    paused = types_pb2.Job(id="j1", status=types_pb2.JOB_STATUS_PAUSED, reason="kept as sent")
    call = InThread(lambda: client.pause_job("j1", release=True))
    assert server.answer("PauseJob", paused) == jobs_pb2.PauseJobRequest(job_id="j1", release=True)
    assert call.result() == paused

    call = InThread(lambda: client.cancel_job("j1", reason="enough"))
    request = server.answer("CancelJob", job("j1", types_pb2.JOB_STATUS_CANCELLED))
    assert request == jobs_pb2.CancelJobRequest(job_id="j1", reason="enough")
    assert call.result().status == types_pb2.JOB_STATUS_CANCELLED

    tree = jobs_pb2.GetJobTreeResponse(root=types_pb2.TreeNode(depth=0, truncated=True))
    got_tree = InThread(lambda: client.get_tree("j1", max_depth=3))
    assert server.answer("GetJobTree", tree) == jobs_pb2.GetJobTreeRequest(job_id="j1", max_depth=3)
    assert got_tree.result() == tree

    deleted = InThread(lambda: client.delete_job("j1"))
    assert server.answer("DeleteJob", jobs_pb2.DeleteJobResponse()) == jobs_pb2.DeleteJobRequest(job_id="j1")
    assert deleted.result() is None


def test_list_jobs_follows_page_tokens_with_the_same_filters(fake: tuple[Client, FakeCoordinator]) -> None:
    client, server = fake
    listed = InThread(lambda: [j.id for j in client.list_jobs(statuses=[RUNNING], queue="q", page_size=2)])
    first = server.answer(
        "ListJobs",
        jobs_pb2.ListJobsResponse(jobs=[job("a", RUNNING), job("b", RUNNING)], next_page_token="7"),
    )
    second = server.answer("ListJobs", jobs_pb2.ListJobsResponse(jobs=[job("c", RUNNING)]))
    assert first == jobs_pb2.ListJobsRequest(page_size=2, statuses=[RUNNING], queue="q")
    assert second == jobs_pb2.ListJobsRequest(page_size=2, statuses=[RUNNING], queue="q", page_token="7")
    assert listed.result() == ["a", "b", "c"]  # the empty token of the second page ended it


def test_wait_watches_for_the_end_then_closes_the_stream(fake: tuple[Client, FakeCoordinator]) -> None:
    client, server = fake
    waited = InThread(lambda: client.wait("j1", timeout=30))
    server.answer("GetJob", job("j1", RUNNING))
    request, watch = server.stream("WatchJob")
    assert request.job_id == "j1" and request.after_seq == 0 and not request.follow
    assert set(request.types) == {
        types_pb2.EVENT_TYPE_JOB_COMPLETED,
        types_pb2.EVENT_TYPE_JOB_FAILED,
        types_pb2.EVENT_TYPE_JOB_CANCELLED,
        types_pb2.EVENT_TYPE_JOB_DELETED,
    }
    watch.send_response(types_pb2.JobEvent(seq=9, type=types_pb2.EVENT_TYPE_JOB_COMPLETED, job_id="j1"))
    # An end event is only a hint: the job itself has the last word.
    server.answer("GetJob", job("j1", COMPLETED))
    assert waited.result().status == COMPLETED
    InThread(watch.cancelled).result()  # the client cancelled the watch instead of leaving it open


def test_wait_raises_timeout_when_the_watch_runs_out_of_time(fake: tuple[Client, FakeCoordinator]) -> None:
    client, server = fake
    waited = InThread(lambda: client.wait("j1", timeout=30))
    server.answer("GetJob", job("j1", RUNNING))
    _, watch = server.stream("WatchJob")
    watch.terminate((), grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    with pytest.raises(TimeoutError, match="'j1' did not finish in time"):
        waited.result()


def test_wait_raises_not_found_when_the_job_is_deleted_meanwhile(
    fake: tuple[Client, FakeCoordinator],
) -> None:
    client, server = fake
    waited = InThread(lambda: client.wait("j1", timeout=30))
    server.answer("GetJob", job("j1", RUNNING))
    _, watch = server.stream("WatchJob")
    watch.terminate((), grpc.StatusCode.NOT_FOUND, "job 'j1' not found")
    with pytest.raises(errors.NotFound, match="job 'j1' not found"):  # not retried by polling
        waited.result()

"""A minimal synchronous Work-stream client for tests that need to control the protocol by hand."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc

from parcelo.v1 import worker_pb2, worker_pb2_grpc


class RawWorker:
    """Speaks the Work stream directly: hello, lease, complete, heartbeat; answers read in order."""

    def __init__(
        self, channel: grpc.Channel, worker_id: str = "raw", queues: tuple[str, ...] = ("default",)
    ) -> None:
        self._out: queue.Queue[worker_pb2.WorkRequest | None] = queue.Queue()
        self._in: queue.Queue[worker_pb2.WorkResponse | Exception] = queue.Queue()
        self._out.put(
            worker_pb2.WorkRequest(hello=worker_pb2.Hello(worker_id=worker_id, queues=list(queues)))
        )
        self._call = worker_pb2_grpc.WorkerServiceStub(channel).Work(self._requests())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        welcome = self.next("welcome")
        self.heartbeat_interval_ms = welcome.welcome.heartbeat_interval_ms

    def _requests(self) -> Iterator[worker_pb2.WorkRequest]:
        while True:
            msg = self._out.get()
            if msg is None:
                return
            yield msg

    def _read(self) -> None:
        try:
            for msg in self._call:
                self._in.put(msg)
        except Exception as err:  # the test decides whether a broken stream matters
            self._in.put(err)

    def next(self, kind: str, timeout: float = 10) -> worker_pb2.WorkResponse:
        """The next response of ``kind`` (others of other kinds are dropped)."""
        while True:
            msg = self._in.get(timeout=timeout)
            if isinstance(msg, Exception):
                raise msg
            if msg.WhichOneof("msg") == kind:
                return msg

    def send(self, msg: worker_pb2.WorkRequest) -> None:
        """Queue a request without waiting for its answer (to pipeline)."""
        self._out.put(msg)

    def lease(self, count: int, timeout: float = 10) -> list[worker_pb2.Lease]:
        """Ask for ``count`` leases and collect grants until that many arrived."""
        self._out.put(worker_pb2.WorkRequest(lease=worker_pb2.LeaseRequest(count=count)))
        leases: list[worker_pb2.Lease] = []
        while len(leases) < count:
            leases.extend(self.next("grant", timeout).grant.leases)
        return leases

    def complete(self, fences: list[int], skipped: list[int] | None = None) -> worker_pb2.CompleteResponse:
        self._out.put(
            worker_pb2.WorkRequest(complete=worker_pb2.CompleteRequest(fences=fences, skipped=skipped or []))
        )
        return self.next("complete").complete

    def heartbeat(self, *beats: worker_pb2.LeaseHeartbeat) -> worker_pb2.HeartbeatResponse:
        self._out.put(worker_pb2.WorkRequest(heartbeat=worker_pb2.HeartbeatRequest(leases=list(beats))))
        return self.next("heartbeat").heartbeat

    def fail(self, *failures: worker_pb2.Failure) -> worker_pb2.FailResponse:
        self._out.put(worker_pb2.WorkRequest(fail=worker_pb2.FailRequest(failures=list(failures))))
        return self.next("fail").fail

    def close(self) -> None:
        self._out.put(None)
        self._call.cancel()

"""The QueueService: queues' depth, limits and pause, over gRPC."""

from __future__ import annotations

import time
from typing import Any

from parcelo.coordinator import errors
from parcelo.coordinator.committer import Committer
from parcelo.coordinator.core import Core
from parcelo.coordinator.dispatcher import Dispatcher
from parcelo.coordinator.jobs import queue_depths
from parcelo.coordinator.service import rpc
from parcelo.v1 import queues_pb2, queues_pb2_grpc


class QueueServicer(queues_pb2_grpc.QueueServiceServicer):
    """Queues: every one a job, a setting or a connected worker has named."""

    def __init__(self, core: Core, committer: Committer, dispatcher: Dispatcher) -> None:
        self._core = core
        self._committer = committer
        self._dispatcher = dispatcher

    def _known(self) -> set[str]:
        core = self._core
        return (
            {job.queue for job in core.jobs.values()} | set(core.queues.names()) | self._dispatcher.queues()
        )

    def _describe(self, names: list[str]) -> list[queues_pb2.Queue]:
        core = self._core
        depths = queue_depths(core.jobs.values(), core.leases.leaf_counts(), core.queues.paused())
        out = []
        for name in names:
            queue = queues_pb2.Queue(name=name)
            record = core.queues.get(name)
            if record is not None:
                queue.CopyFrom(record)
            depth = depths.get(name)
            if depth is not None:
                queue.pending_leaves, queue.running_leases = depth.pending, depth.running
            queue.jobs = sum(1 for job in core.jobs.values() if job.queue == name and not job.finished)
            out.append(queue)
        return out

    def _one(self, name: str) -> queues_pb2.Queue:
        if name not in self._known():
            raise errors.NotFound(f"queue '{name[:128]}' not found: no job, setting or worker names it")
        return self._describe([name])[0]

    async def _changed(self, name: str) -> queues_pb2.Queue:
        self._dispatcher.work_available()
        await self._committer.durable()
        return self._one(name)

    @rpc
    async def ListQueues(
        self, request: queues_pb2.ListQueuesRequest, context: Any
    ) -> queues_pb2.ListQueuesResponse:
        return queues_pb2.ListQueuesResponse(queues=self._describe(sorted(self._known())))

    @rpc
    async def GetQueue(self, request: queues_pb2.GetQueueRequest, context: Any) -> queues_pb2.Queue:
        return self._one(request.name)

    @rpc
    async def UpdateQueue(self, request: queues_pb2.UpdateQueueRequest, context: Any) -> queues_pb2.Queue:
        self._core.queues.update(
            request.name,
            time.time(),
            max_concurrency=request.max_concurrency if request.HasField("max_concurrency") else None,
            max_leases_per_second=(
                request.max_leases_per_second if request.HasField("max_leases_per_second") else None
            ),
            burst=request.burst if request.HasField("burst") else None,
        )
        return await self._changed(request.name)

    @rpc
    async def PauseQueue(self, request: queues_pb2.PauseQueueRequest, context: Any) -> queues_pb2.Queue:
        self._core.queues.pause(request.name, time.time())
        return await self._changed(request.name)

    @rpc
    async def ResumeQueue(self, request: queues_pb2.ResumeQueueRequest, context: Any) -> queues_pb2.Queue:
        self._core.queues.resume(request.name, time.time())
        return await self._changed(request.name)

"""The ScheduleService: recurring jobs' schedules, over gRPC.

Readers see the schedules as written to disk (:class:`ScheduleViews`); a change is answered once
it is written, with the record as written.
"""

from __future__ import annotations

import time
from typing import Any

from parcelo.coordinator.codec import job_to_proto
from parcelo.coordinator.committer import Committer
from parcelo.coordinator.core import Core
from parcelo.coordinator.schedules import ScheduleViews
from parcelo.coordinator.service import rpc
from parcelo.v1 import schedules_pb2, schedules_pb2_grpc


class ScheduleServicer(schedules_pb2_grpc.ScheduleServiceServicer):
    """Schedules: created, changed and fired by hand in the core, read from what is durable."""

    def __init__(self, core: Core, views: ScheduleViews, committer: Committer) -> None:
        self._core = core
        self._views = views
        self._committer = committer

    async def _written(self, schedule_id: str) -> schedules_pb2.Schedule:
        await self._committer.durable()
        return self._views.get(schedule_id)

    @rpc
    async def CreateSchedule(
        self, request: schedules_pb2.CreateScheduleRequest, context: Any
    ) -> schedules_pb2.Schedule:
        created = self._core.schedules.create(request.schedule, time.time())
        return await self._written(created.id)

    @rpc
    async def GetSchedule(
        self, request: schedules_pb2.GetScheduleRequest, context: Any
    ) -> schedules_pb2.Schedule:
        return self._views.get(request.id)

    @rpc
    async def ListSchedules(
        self, request: schedules_pb2.ListSchedulesRequest, context: Any
    ) -> schedules_pb2.ListSchedulesResponse:
        return schedules_pb2.ListSchedulesResponse(schedules=self._views.all())

    @rpc
    async def UpdateSchedule(
        self, request: schedules_pb2.UpdateScheduleRequest, context: Any
    ) -> schedules_pb2.Schedule:
        self._core.schedules.update(
            request.id,
            time.time(),
            cron=request.cron if request.HasField("cron") else None,
            every=request.every if request.HasField("every") else None,
            timezone=request.timezone if request.HasField("timezone") else None,
            overlap=request.overlap if request.HasField("overlap") else None,
            catch_up=request.catch_up if request.HasField("catch_up") else None,
            template=request.template if request.HasField("template") else None,
        )
        return await self._written(request.id)

    @rpc
    async def PauseSchedule(
        self, request: schedules_pb2.PauseScheduleRequest, context: Any
    ) -> schedules_pb2.Schedule:
        self._core.schedules.pause(request.id)
        return await self._written(request.id)

    @rpc
    async def ResumeSchedule(
        self, request: schedules_pb2.ResumeScheduleRequest, context: Any
    ) -> schedules_pb2.Schedule:
        self._core.schedules.resume(request.id, time.time())
        return await self._written(request.id)

    @rpc
    async def DeleteSchedule(
        self, request: schedules_pb2.DeleteScheduleRequest, context: Any
    ) -> schedules_pb2.DeleteScheduleResponse:
        self._core.schedules.delete(request.id)
        await self._committer.durable()
        return schedules_pb2.DeleteScheduleResponse()

    @rpc
    async def TriggerSchedule(
        self, request: schedules_pb2.TriggerScheduleRequest, context: Any
    ) -> schedules_pb2.TriggerScheduleResponse:
        core = self._core
        job = core.trigger_schedule(request.id, time.time())
        schedule = await self._written(request.id)
        return schedules_pb2.TriggerScheduleResponse(
            job=job_to_proto(job, core.stats(job)), schedule=schedule
        )

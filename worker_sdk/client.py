"""Synchronous client of the coordinator's admin API (``parcelo.v1.JobService``, ``AdminService``
and ``WorkerService.ListWorkers``).

The client is a thin, typed layer over the generated stub: it builds requests from Python values
(a job's options as :class:`parcelo.options.JobOptions`), returns the protobuf messages unchanged,
and turns every ``grpc.RpcError`` into a :class:`parcelo.errors.RpcError`.

Example::

    from datetime import timedelta
    from parcelo import JobOptions
    from parcelo.client import Client

    with Client("localhost:50051") as client:
        options = JobOptions(0, 10**9, max_range_size=10**6, params={"k": 1}, lease_ttl=timedelta(seconds=20))
        job = client.create_job(options)
        final = client.wait(job.id, timeout=600)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from os import PathLike
from types import TracebackType
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parcelo import defaults
from parcelo.channel import TLS, open_channel, token_metadata
from parcelo.errors import ConfigError, JobNotCompleted, RpcError, from_grpc
from parcelo.options import JobOptions
from parcelo.options import encode_params as encode_params  # moved to parcelo.options; still importable here
from parcelo.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    queues_pb2,
    queues_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    types_pb2,
    worker_pb2,
    worker_pb2_grpc,
)

logger = logging.getLogger(__name__)

JobStatus: TypeAlias = types_pb2.JobStatus.ValueType
EventType: TypeAlias = types_pb2.EventType.ValueType
Overlap: TypeAlias = schedules_pb2.Overlap.ValueType

OVERLAPS: dict[str, Overlap] = {
    name.removeprefix("OVERLAP_").lower().replace("_", "-"): value
    for name, value in schedules_pb2.Overlap.items()
    if value != schedules_pb2.OVERLAP_UNSPECIFIED
}
"""A schedule's overlap policies by their CLI names (``skip``, ``allow``, ``cancel-previous``)."""

TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {
        types_pb2.JOB_STATUS_COMPLETED,
        types_pb2.JOB_STATUS_FAILED,
        types_pb2.JOB_STATUS_CANCELLED,
    }
)
"""Statuses a job does not leave on its own (only ``RetryFailed`` revives a failed job)."""

_END_EVENTS: tuple[EventType, ...] = (
    types_pb2.EVENT_TYPE_JOB_COMPLETED,
    types_pb2.EVENT_TYPE_JOB_FAILED,
    types_pb2.EVENT_TYPE_JOB_CANCELLED,
    types_pb2.EVENT_TYPE_JOB_DELETED,
)

POLL_INTERVAL = 0.5
"""Seconds between ``GetJob`` calls when a watch stream is not available."""

# Streams that break for these reasons are worth replacing by polling; any other code (NOT_FOUND,
# INVALID_ARGUMENT, ...) would fail the same way when polled, so it is raised instead.
_FALLBACK_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class Client:
    """A connection to one coordinator's admin API.

    Every method raises :class:`parcelo.errors.RpcError` (or the subclass matching the status code)
    when the coordinator answers with an error, :class:`parcelo.errors.Unavailable` when it
    cannot be reached (a failed TLS handshake included), and
    :class:`parcelo.errors.Unauthenticated` or :class:`parcelo.errors.PermissionDenied` when it
    refuses the token.

    Args:
        target: ``host:port`` of the coordinator.
        timeout: Seconds each unary call may take; ``None`` for no limit. Streams are not limited.
        channel: A ready channel to use instead of opening one to ``target`` (tests, interceptors).
            The client does not close a channel it was given.
        tls: Connect over TLS (see :class:`parcelo.channel.TLS`); plaintext when ``None``. Not
            with ``channel``.
        token: Bearer token sent with every call, for a coordinator started with ``--auth-tokens``.

    Raises:
        ConfigError: A TLS file cannot be read, the token cannot be sent as metadata, or both
            ``tls`` and ``channel`` were given.
    """

    def __init__(
        self,
        target: str = defaults.DEFAULT_TARGET,
        *,
        timeout: float | None = 30,
        channel: grpc.Channel | None = None,
        tls: TLS | None = None,
        token: str | None = None,
    ) -> None:
        if channel is not None and tls is not None:
            raise ConfigError("tls: give tls or a ready channel, not both")
        self.target = target
        self.timeout = timeout
        self._metadata = token_metadata(token)
        self._owns_channel = channel is None
        if channel is None:
            channel = open_channel(target, tls.credentials() if tls is not None else None)
        self._channel: grpc.Channel = channel
        self._stub = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._queues = queues_pb2_grpc.QueueServiceStub(self._channel)
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._schedules = schedules_pb2_grpc.ScheduleServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (unless it was passed in)."""
        if self._owns_channel:
            self._channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        try:
            return method(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
                **kwargs,
            )
        except grpc.RpcError as err:
            raise from_grpc(err) from None

    def create_job(self, options: JobOptions) -> types_pb2.Job:
        """Create a job as ``options`` describe it (see :class:`parcelo.options.JobOptions`).

        With ``options.job_id`` or ``options.request_id`` the call is idempotent: repeating it
        returns the job created first.

        Returns:
            The job as created (or as found, for an idempotent repeat), its spec with the
            coordinator's defaults filled in.

        Raises:
            ConfigError: ``options.params`` is a mapping that can no longer be encoded as JSON.
            InvalidArgument: The coordinator rejected the spec; the message names the field.
            AlreadyExists: ``options.job_id`` is taken by a job with a different spec.
        """
        request = jobs_pb2.CreateJobRequest(spec=options.to_proto())
        job: types_pb2.Job = self._call(self._stub.CreateJob, request)
        return job

    def get_job(self, job_id: str) -> types_pb2.Job:
        """Return the job with its current status and stats.

        Raises:
            NotFound: No such job.
        """
        job: types_pb2.Job = self._call(self._stub.GetJob, jobs_pb2.GetJobRequest(job_id=job_id))
        return job

    def list_jobs(
        self,
        *,
        statuses: Iterable[JobStatus] = (),
        queue: str | None = None,
        page_size: int | None = None,
    ) -> Iterator[types_pb2.Job]:
        """Yield jobs, newest first, fetching further pages as the caller iterates.

        Args:
            statuses: Only jobs in one of these statuses (all when empty).
            queue: Only jobs of this queue.
            page_size: Jobs fetched per call (server default when ``None``).
        """
        request = jobs_pb2.ListJobsRequest(
            page_size=page_size or 0, statuses=list(statuses), queue=queue or ""
        )
        while True:
            page: jobs_pb2.ListJobsResponse = self._call(self._stub.ListJobs, request)
            yield from page.jobs
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def pause_job(self, job_id: str, release: bool = False) -> types_pb2.Job:
        """Stop handing out leases of the job.

        Args:
            job_id: The job.
            release: Also ask running handlers to checkpoint and give their leaves back now.

        Raises:
            FailedPrecondition: The job is finished.
        """
        request = jobs_pb2.PauseJobRequest(job_id=job_id, release=release)
        job: types_pb2.Job = self._call(self._stub.PauseJob, request)
        return job

    def resume_job(self, job_id: str) -> types_pb2.Job:
        """Continue a paused (or created-paused) job.

        Raises:
            FailedPrecondition: The job is neither paused nor pending.
        """
        job: types_pb2.Job = self._call(self._stub.ResumeJob, jobs_pb2.ResumeJobRequest(job_id=job_id))
        return job

    def cancel_job(self, job_id: str, reason: str = "") -> types_pb2.Job:
        """End the job; running handlers are told to stop.

        Raises:
            FailedPrecondition: The job is already finished.
        """
        request = jobs_pb2.CancelJobRequest(job_id=job_id, reason=reason)
        job: types_pb2.Job = self._call(self._stub.CancelJob, request)
        return job

    def delete_job(self, job_id: str) -> None:
        """Remove a finished job and all its records.

        Raises:
            FailedPrecondition: The job is not finished.
        """
        self._call(self._stub.DeleteJob, jobs_pb2.DeleteJobRequest(job_id=job_id))

    def retry_failed(self, job_id: str) -> types_pb2.Job:
        """Put the job's error leaves back to pending (and a failed job back to running)."""
        request = jobs_pb2.RetryFailedRequest(job_id=job_id)
        job: types_pb2.Job = self._call(self._stub.RetryFailed, request)
        return job

    def update_job(
        self,
        job_id: str,
        *,
        priority: int | None = None,
        weight: int | None = None,
        max_concurrency: int | None = None,
        max_leases_per_second: float | None = None,
        burst: int | None = None,
    ) -> types_pb2.Job:
        """Change a running job's priority, weight or limits (``None``: unchanged; a limit of 0:
        none). Lowering a limit lets running leases finish."""
        request = jobs_pb2.UpdateJobRequest(
            job_id=job_id,
            priority=priority,
            weight=weight,
            max_concurrency=max_concurrency,
            max_leases_per_second=max_leases_per_second,
            burst=burst,
        )
        job: types_pb2.Job = self._call(self._stub.UpdateJob, request)
        return job

    def list_queues(self) -> list[queues_pb2.Queue]:
        """Every queue a job, a setting or a connected worker names: depth, limits, paused."""
        answer: queues_pb2.ListQueuesResponse = self._call(
            self._queues.ListQueues, queues_pb2.ListQueuesRequest()
        )
        return list(answer.queues)

    def get_queue(self, name: str) -> queues_pb2.Queue:
        queue: queues_pb2.Queue = self._call(self._queues.GetQueue, queues_pb2.GetQueueRequest(name=name))
        return queue

    def update_queue(
        self,
        name: str,
        *,
        max_concurrency: int | None = None,
        max_leases_per_second: float | None = None,
        burst: int | None = None,
    ) -> queues_pb2.Queue:
        """Change the limits that bound the sum over a queue's jobs (``None``: unchanged; 0: none)."""
        request = queues_pb2.UpdateQueueRequest(
            name=name,
            max_concurrency=max_concurrency,
            max_leases_per_second=max_leases_per_second,
            burst=burst,
        )
        queue: queues_pb2.Queue = self._call(self._queues.UpdateQueue, request)
        return queue

    def pause_queue(self, name: str) -> queues_pb2.Queue:
        """No lease from any job of the queue until :meth:`resume_queue`."""
        queue: queues_pb2.Queue = self._call(self._queues.PauseQueue, queues_pb2.PauseQueueRequest(name=name))
        return queue

    def resume_queue(self, name: str) -> queues_pb2.Queue:
        queue: queues_pb2.Queue = self._call(
            self._queues.ResumeQueue, queues_pb2.ResumeQueueRequest(name=name)
        )
        return queue

    def create_schedule(
        self,
        schedule_id: str,
        template: JobOptions,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        timezone: str | None = None,
        overlap: str | None = None,
        catch_up: int | None = None,
        paused: bool = False,
    ) -> schedules_pb2.Schedule:
        """Create a schedule firing a job made from ``template`` on ``cron`` or ``every``.

        Args:
            schedule_id: The schedule's id; each tick's job is ``<id>-<YYYYMMDDTHHMMSSZ>`` (UTC).
            template: The job each tick creates (its ``job_id`` and ``request_id`` are the tick's).
            cron: A 5-field cron expression or an alias such as ``@hourly``.
            every: An interval (whole seconds): ticks at creation + k * every.
            timezone: The IANA time zone ``cron`` is read in (UTC when ``None``).
            overlap: While a job of the schedule is unfinished: ``skip`` (the default), ``allow``
                or ``cancel-previous`` (see :data:`OVERLAPS`).
            catch_up: Missed ticks fired after downtime, the newest ones (1 when ``None``; 0: none).
            paused: Create it paused; :meth:`resume_schedule` starts it.

        Raises:
            ConfigError: ``overlap`` is not a known policy.
            InvalidArgument: A bad cron expression, time zone or template; the message names the field.
            AlreadyExists: A schedule with this id exists.
        """
        schedule = schedules_pb2.Schedule(
            id=schedule_id,
            template=template.to_proto(),
            cron=cron or "",
            timezone=timezone or "",
            overlap=_overlap(overlap) if overlap is not None else schedules_pb2.OVERLAP_UNSPECIFIED,
            catch_up=catch_up,
            paused=paused,
        )
        if every is not None:
            schedule.every.FromTimedelta(every)
        request = schedules_pb2.CreateScheduleRequest(schedule=schedule)
        created: schedules_pb2.Schedule = self._call(self._schedules.CreateSchedule, request)
        return created

    def get_schedule(self, schedule_id: str) -> schedules_pb2.Schedule:
        """The schedule, with its last and next tick. Raises :class:`NotFound` when there is none."""
        found: schedules_pb2.Schedule = self._call(
            self._schedules.GetSchedule, schedules_pb2.GetScheduleRequest(id=schedule_id)
        )
        return found

    def list_schedules(self) -> list[schedules_pb2.Schedule]:
        """Every schedule, by id."""
        answer: schedules_pb2.ListSchedulesResponse = self._call(
            self._schedules.ListSchedules, schedules_pb2.ListSchedulesRequest()
        )
        return list(answer.schedules)

    def update_schedule(
        self,
        schedule_id: str,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        timezone: str | None = None,
        overlap: str | None = None,
        catch_up: int | None = None,
        template: JobOptions | None = None,
    ) -> schedules_pb2.Schedule:
        """Change the fields given (``None``: unchanged); ticks are counted again from now.

        ``cron`` replaces ``every`` and the other way round; ``template`` replaces the whole template.
        """
        request = schedules_pb2.UpdateScheduleRequest(
            id=schedule_id,
            cron=cron,
            timezone=timezone,
            overlap=_overlap(overlap) if overlap is not None else None,
            catch_up=catch_up,
        )
        if every is not None:
            request.every.FromTimedelta(every)
        if template is not None:
            request.template.CopyFrom(template.to_proto())
        changed: schedules_pb2.Schedule = self._call(self._schedules.UpdateSchedule, request)
        return changed

    def pause_schedule(self, schedule_id: str) -> schedules_pb2.Schedule:
        """No tick fires until :meth:`resume_schedule`."""
        changed: schedules_pb2.Schedule = self._call(
            self._schedules.PauseSchedule, schedules_pb2.PauseScheduleRequest(id=schedule_id)
        )
        return changed

    def resume_schedule(self, schedule_id: str) -> schedules_pb2.Schedule:
        """Fire ticks again from now on (those missed while paused are not caught up)."""
        changed: schedules_pb2.Schedule = self._call(
            self._schedules.ResumeSchedule, schedules_pb2.ResumeScheduleRequest(id=schedule_id)
        )
        return changed

    def trigger_schedule(self, schedule_id: str) -> types_pb2.Job:
        """Fire a tick now, whatever the overlap policy and the paused flag say; returns its job."""
        answer: schedules_pb2.TriggerScheduleResponse = self._call(
            self._schedules.TriggerSchedule, schedules_pb2.TriggerScheduleRequest(id=schedule_id)
        )
        return answer.job

    def delete_schedule(self, schedule_id: str) -> None:
        """Remove the schedule; the jobs it created stay."""
        self._call(self._schedules.DeleteSchedule, schedules_pb2.DeleteScheduleRequest(id=schedule_id))

    def list_workers(self) -> list[worker_pb2.WorkerInfo]:
        """The workers connected now (``WorkerService.ListWorkers``), by worker id."""
        stub = worker_pb2_grpc.WorkerServiceStub(self._channel)
        answer: worker_pb2.ListWorkersResponse = self._call(stub.ListWorkers, worker_pb2.ListWorkersRequest())
        return list(answer.workers)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The coordinator's standard ``grpc.health.v1`` status for ``service`` (``""``: the server).

        Returns the status name (``"SERVING"``, ``"NOT_SERVING"``, ...); a service the
        coordinator does not know raises :class:`parcelo.errors.NotFound`.
        """
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=service)
        answer = self._call(stub.Check, request, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    def get_tree(self, job_id: str, max_depth: int = 0) -> jobs_pb2.GetJobTreeResponse:
        """Return a snapshot of the job's range tree down to ``max_depth`` (root is depth 0)."""
        request = jobs_pb2.GetJobTreeRequest(job_id=job_id, max_depth=max_depth)
        tree: jobs_pb2.GetJobTreeResponse = self._call(self._stub.GetJobTree, request)
        return tree

    def backup(
        self, to_dir: str | PathLike[str], *, timeout: float | None = None
    ) -> admin_pb2.BackupResponse:
        """Have the coordinator write an online backup of its store to ``to_dir`` and wait until it is complete.

        Args:
            to_dir: Absolute path, on the coordinator's host, of a folder that does not exist yet.
            timeout: Seconds the call may take; ``None`` (the default): no limit, whatever the
                client's timeout, since copying a large store can take longer than any other call.

        Returns:
            Where it was written (``path``), its size (``bytes``, ``files``) and the time it took.

        Raises:
            InvalidArgument: ``to_dir`` is relative, or in the data dir.
            AlreadyExists: ``to_dir`` exists.
            FailedPrecondition: The store cannot write now (a full disk), or the checkpoint failed.
        """
        request = admin_pb2.BackupRequest(to_dir=os.fspath(to_dir))
        try:
            answer: admin_pb2.BackupResponse = self._admin.Backup(
                request, timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_grpc(err) from None
        return answer

    def watch(
        self,
        job_id: str,
        after_seq: int = 0,
        follow: bool = False,
        types: Iterable[EventType] = (),
        timeout: float | None = None,
    ) -> Iterator[types_pb2.JobEvent]:
        """Yield the job's events after ``after_seq``, then live ones until the job ends.

        The stream is cancelled when the iterator is closed or garbage-collected.

        Args:
            job_id: The job.
            after_seq: Only events with a larger ``seq`` (0: from the oldest event retained).
            follow: Keep the stream open after the job has finished.
            types: Only these event types (all when empty).
            timeout: Seconds the whole stream may last; ``None`` for no limit.

        Raises:
            NotFound: No such job.
            RpcError: With code ``DEADLINE_EXCEEDED`` when ``timeout`` ran out.
        """
        request = jobs_pb2.WatchJobRequest(
            job_id=job_id, after_seq=after_seq, follow=follow, types=list(types)
        )
        try:
            call = self._stub.WatchJob(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_grpc(err) from None
        try:
            yield from call
        except grpc.RpcError as err:
            raise from_grpc(err) from None
        finally:
            call.cancel()

    def wait(self, job_id: str, timeout: float | None = None) -> types_pb2.Job:
        """Block until the job is completed, failed or cancelled, and return it.

        Listens on ``WatchJob`` for the job's end; if that stream breaks (coordinator restarted,
        method not implemented), polls ``GetJob`` every :data:`POLL_INTERVAL` seconds instead.

        Args:
            job_id: The job.
            timeout: Seconds to wait at most; ``None`` waits for ever.

        Returns:
            The job in its terminal status.

        Raises:
            TimeoutError: The job did not finish within ``timeout``.
            NotFound: No such job (or it was deleted while waiting).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get_job(job_id)
        if job.status in TERMINAL_STATUSES:
            return job
        try:
            return self._wait_streaming(job_id, deadline)
        except RpcError as err:
            if err.code not in _FALLBACK_CODES:
                raise
            logger.info("watch of job %s broke (%s); polling instead", job_id, err)
        return self._wait_polling(job_id, deadline)

    def get_result(self, job_id: str) -> Any:
        """The job's result as it stands (see :func:`result_of`): partial until it completes."""
        return result_of(self.get_job(job_id))

    def wait_result(self, job_id: str, timeout: float | None = None) -> Any:
        """Block until the job ends (as :meth:`wait`) and return its final result, decoded.

        Raises:
            JobNotCompleted: The job failed or was cancelled (``err.job`` has its partial result).
            TimeoutError: The job did not finish within ``timeout``.
        """
        job = self.wait(job_id, timeout)
        if job.status != types_pb2.JOB_STATUS_COMPLETED:
            raise JobNotCompleted(job)
        return result_of(job)

    def _wait_streaming(self, job_id: str, deadline: float | None) -> types_pb2.Job:
        after_seq = 0
        while True:
            try:
                for event in self.watch(job_id, after_seq, types=_END_EVENTS, timeout=_left(deadline)):
                    after_seq = event.seq
                    # Replayed end events may predate a RetryFailed, so the job itself has the last word.
                    job = self.get_job(job_id)
                    if job.status in TERMINAL_STATUSES:
                        return job
            except RpcError as err:
                if err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError(f"job {job_id!r} did not finish in time") from None
                raise
            # The server ends the stream when the job ends; a stream that ended early is resumed,
            # after a pause so that a server ending streams at once is not hammered.
            job = self.get_job(job_id)
            if job.status in TERMINAL_STATUSES:
                return job
            _check_deadline(job_id, deadline)
            left = _left(deadline)
            time.sleep(POLL_INTERVAL if left is None else min(POLL_INTERVAL, left))

    def _wait_polling(self, job_id: str, deadline: float | None) -> types_pb2.Job:
        while True:
            left = _left(deadline)
            # wait_for_ready rides out a coordinator restart instead of failing at once.
            request = jobs_pb2.GetJobRequest(job_id=job_id)
            call_timeout = self.timeout if left is None else min(left, self.timeout or left)
            try:
                job: types_pb2.Job = self._call(
                    self._stub.GetJob, request, timeout=call_timeout, wait_for_ready=True
                )
            except RpcError as err:
                if err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    _check_deadline(job_id, deadline)
                    continue
                raise
            if job.status in TERMINAL_STATUSES:
                return job
            _check_deadline(job_id, deadline)
            left = _left(deadline)
            time.sleep(POLL_INTERVAL if left is None else min(POLL_INTERVAL, left))


def result_of(job: types_pb2.Job) -> Any:
    """The result of ``job`` decoded from ``job.result_json``; None when it has none (yet).

    It is final when the job completed, and partial (``job.result_partial``) before. Integers
    come back exact, however large.
    """
    return json.loads(job.result_json) if job.result_json else None


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _check_deadline(job_id: str, deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise TimeoutError(f"job {job_id!r} did not finish in time")


def _overlap(name: str) -> Overlap:
    try:
        return OVERLAPS[name]
    except KeyError:
        raise ConfigError(
            f"overlap: must be one of {', '.join(OVERLAPS)} (got {name!r})", field="overlap"
        ) from None

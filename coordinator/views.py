"""What readers see: the job records as last written to disk.

``GetJob``, ``ListJobs`` and the job in ``GetJobTree`` answer from here, not
from the core's live state, so a reader is never told something (a status,
a count) that a crash could take back. The committer feeds it the job
records of each batch once the batch is on disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from parcelo import defaults
from parcelo.coordinator.errors import InvalidArgument
from parcelo.coordinator.jobs import find
from parcelo.coordinator.limits import MAX_LIST_BYTES
from parcelo.v1 import types_pb2


def _order(job: types_pb2.Job) -> tuple[int, str]:
    # Creation time, then id: a total order that survives restarts.
    return (job.created_at.seconds * 1_000_000_000 + job.created_at.nanos, job.id)


class JobViews:
    """The durable record of every job, by id."""

    def __init__(self) -> None:
        self._jobs: dict[str, types_pb2.Job] = {}

    def written(self, records: Iterable[types_pb2.Job], deleted: Iterable[str]) -> None:
        """These records are on disk now; these jobs are gone from it."""
        for job_id in deleted:
            self._jobs.pop(job_id, None)
        for record in records:
            self._jobs[record.id] = record

    def get(self, job_id: str) -> types_pb2.Job:
        """The durable record of a job; :class:`NotFound` when there is none."""
        return find(self._jobs, job_id)

    def find(self, job_id: str) -> types_pb2.Job | None:
        """The durable record of a job, or None."""
        return self._jobs.get(job_id)

    def list(
        self, *, statuses: Sequence[int], queue: str, page_size: int, page_token: str
    ) -> tuple[list[types_pb2.Job], str]:
        """A page of jobs, newest first, and the token of the next page ("" on the last).

        A page holds at most ``page_size`` jobs and, past its first job, at most
        ``MAX_LIST_BYTES`` of them, so it fits a client's default 4 MiB message limit.
        """
        if page_size > defaults.MAX_LIST_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be at most {defaults.MAX_LIST_PAGE_SIZE}")
        size = page_size or defaults.LIST_PAGE_SIZE
        before: tuple[int, str] | None = None
        if page_token:
            nanos, sep, last_id = page_token.partition(":")
            if not sep or not nanos.isdigit():
                raise InvalidArgument("page_token", "is not a token returned by ListJobs")
            before = (int(nanos), last_id)
        wanted = set(statuses)
        page = sorted(
            (
                j
                for j in self._jobs.values()
                if (before is None or _order(j) < before)
                and (not wanted or j.status in wanted)
                and (not queue or j.spec.queue == queue)
            ),
            key=_order,
            reverse=True,
        )
        taken: list[types_pb2.Job] = []
        total = 0
        for job in page[:size]:
            total += job.ByteSize()
            if taken and total > MAX_LIST_BYTES:
                break
            taken.append(job)
        if len(taken) == len(page):
            return taken, ""
        created, last_id = _order(taken[-1])
        return taken, f"{created}:{last_id}"

"""What the core changed, in domain terms: the contract between the core and the store.

The core produces a :class:`Changes` per group commit (:meth:`Core.take_changes`); the store
alone turns it into keys and bytes; once it is written, the coordinator publishes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parcelo.coordinator.events import Drained
from parcelo.coordinator.tree import Node
from parcelo.v1 import queues_pb2, schedules_pb2, types_pb2


@dataclass
class Changes:
    """Everything the core changed since the last :meth:`Core.take_changes`, in domain terms.

    The store turns it into keys and bytes and writes it as one atomic batch.
    """

    # Nodes to write, with the lease each holds (``node.lease``), by job.
    nodes: dict[str, list[Node]] = field(default_factory=dict)
    # Node spans to delete, by job.
    deleted_spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # The job records to write: what a reader sees once the batch is durable.
    jobs: dict[str, types_pb2.Job] = field(default_factory=dict)
    # Jobs to remove with everything they own.
    deleted_jobs: list[str] = field(default_factory=list)
    # Event segments to write and delete, and the events to show once durable.
    events: Drained = field(default_factory=Drained)
    # A new fence high-water mark to make durable.
    fence_limit: int | None = None
    # Pages of the accepted-fence bitmap to write (page -> bits) and to delete.
    accepted_pages: dict[int, bytes] = field(default_factory=dict)
    dropped_pages: list[int] = field(default_factory=list)
    # Queue settings (limits, paused) to write.
    queues: dict[str, queues_pb2.Queue] = field(default_factory=dict)
    # Schedules to write, None for those to delete.
    schedules: dict[str, schedules_pb2.Schedule | None] = field(default_factory=dict)
    # A job changed status: worth a synced write even if no one waits for it.
    status_changed: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.nodes
            or self.deleted_spans
            or self.jobs
            or self.deleted_jobs
            or self.events.written
            or self.events.expired
            or self.events.published
            or self.fence_limit is not None
            or self.accepted_pages
            or self.dropped_pages
            or self.queues
            or self.schedules
        )

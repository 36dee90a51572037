"""A worker's results on their way to the coordinator: batched into requests, kept until answered.

Pure: no I/O and no clock. The worker queues each finished lease here, takes the requests to
send when it flushes, marks fences answered as answers arrive, and after a reconnect queues
every result not yet answered again (results are idempotent by fence: a result sent twice
counts once).
"""

from __future__ import annotations

from collections.abc import Sequence

from parcelo.v1 import worker_pb2

_Completion = tuple[str, int, tuple[worker_pb2.LeafFailure, ...]]
"""An unanswered completion: its result JSON, the end it ran to, a leaf run's failed leaves."""


class Outbox:
    """Results waiting to be sent, and results sent but not yet answered, by fence."""

    def __init__(self) -> None:
        self._complete: list[int] = []
        # Parallel to _complete: the result JSON ("" for none), the handler's run time in
        # microseconds (0: not measured), and the end the lease was run to (0: its own end; a
        # SHRINK it accepted ended it early otherwise).
        self._results: list[str] = []
        self._run_us: list[int] = []
        self._ends: list[int] = []
        # The failed leaves of leaf runs among them.
        self._failed_leaves: list[worker_pb2.LeafFailure] = []
        self._skipped: list[int] = []
        self._failures: list[worker_pb2.Failure] = []
        # By fence: ("complete", (result JSON, end, failed leaves)), ("skip", None) or ("fail", the
        # failure).
        self._unanswered: dict[int, tuple[str, _Completion | worker_pb2.Failure | None]] = {}

    def pending(self) -> int:
        """Results queued and not yet taken to be sent."""
        return len(self._complete) + len(self._skipped) + len(self._failures)

    def unanswered(self) -> int:
        """Results sent (or queued) with no answer yet."""
        return len(self._unanswered)

    def complete(
        self,
        fence: int,
        result_json: str,
        run_us: int,
        end: int,
        failed_leaves: Sequence[worker_pb2.LeafFailure] = (),
    ) -> None:
        """A lease succeeded: its result ("" for none), run time and end (0: the lease's end);
        for a leaf run, the leaves of it that failed."""
        self._queue_completion(fence, result_json, run_us, end, failed_leaves)
        self._unanswered[fence] = ("complete", (result_json, end, tuple(failed_leaves)))

    def skip(self, fence: int) -> None:
        """A lease's range needed nothing (a probe said prune)."""
        self._skipped.append(fence)
        self._unanswered[fence] = ("skip", None)

    def fail(self, failure: worker_pb2.Failure) -> None:
        """A lease failed, or is given back (``failure.released``)."""
        self._failures.append(failure)
        self._unanswered[failure.fence] = ("fail", failure)

    def answered(self, fence: int) -> None:
        """The coordinator answered the result of ``fence`` (accepted or rejected): forget it."""
        self._unanswered.pop(fence, None)

    def take(self, worker_id: str) -> list[worker_pb2.WorkRequest]:
        """The requests that send every queued result (at most one completion and one failure
        request), emptying the queue; the results stay unanswered until :meth:`answered`."""
        out: list[worker_pb2.WorkRequest] = []
        if self._complete or self._skipped:
            complete = worker_pb2.CompleteRequest(
                fences=self._complete,
                skipped=self._skipped,
                worker_id=worker_id,
                # One per fence, or none at all when no lease has one.
                results_json=self._results if any(self._results) else (),
                handler_us=self._run_us if any(self._run_us) else (),
                ends=self._ends if any(self._ends) else (),
                failed_leaves=self._failed_leaves,
            )
            out.append(worker_pb2.WorkRequest(complete=complete))
            self._complete, self._results, self._run_us, self._ends, self._skipped = [], [], [], [], []
            self._failed_leaves = []
        if self._failures:
            failed = worker_pb2.FailRequest(failures=self._failures, worker_id=worker_id)
            out.append(worker_pb2.WorkRequest(fail=failed))
            self._failures = []
        return out

    def requeue_unanswered(self) -> None:
        """Queue every unanswered result again (a new stream: the old one's answers are lost)."""
        self._complete, self._results, self._run_us, self._ends = [], [], [], []
        self._skipped, self._failures, self._failed_leaves = [], [], []
        for fence, (kind, item) in self._unanswered.items():
            if kind == "complete" and isinstance(item, tuple):
                result_json, end, failed_leaves = item
                # Its run time counted once.
                self._queue_completion(fence, result_json, 0, end, failed_leaves)
            elif kind == "skip":
                self._skipped.append(fence)
            elif isinstance(item, worker_pb2.Failure):
                self._failures.append(item)

    def _queue_completion(
        self,
        fence: int,
        result_json: str,
        run_us: int,
        end: int,
        failed_leaves: Sequence[worker_pb2.LeafFailure],
    ) -> None:
        self._complete.append(fence)
        self._results.append(result_json)
        self._run_us.append(run_us)
        self._ends.append(end)
        if failed_leaves:
            self._failed_leaves.extend(failed_leaves)

"""Lease dispatch: the lease credit of every worker stream, matched with available work.

``Dispatcher`` hands out leases when credit and work meet, one grant message
per stream per round. A round is all-or-nothing per lease: a lease whose
grant message cannot be built is given back at once (as if never granted)
and its job is passed over for the rest of the round, so a failure never
leaves a leaf held by nobody nor takes the credit another job could use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from parcelo.coordinator.codec import (
    job_info,
    job_runs,
    lease_to_proto,
    pack_run,
    packed_marks,
    packed_truncate,
)
from parcelo.coordinator.core import Core
from parcelo.coordinator.leases import Lease, LeaseKind
from parcelo.v1 import worker_pb2

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Session:
    """One worker stream (or one waiting unary Lease call) and its lease credit."""

    worker_id: str
    queues: tuple[str, ...]
    out: asyncio.Queue[worker_pb2.WorkResponse | None] = field(default_factory=asyncio.Queue)
    credits: int = 0
    sent_jobs: set[str] = field(default_factory=set)
    # Whether the stream's hello came (and its worker id counts among the open streams).
    said_hello: bool = False
    # The peer address of the stream (worker_id may be replaced by hello's).
    address: str = ""
    # When the credit not yet granted was asked for (for the grant latency metric).
    waiting_since: float = 0.0
    # The stream's hello set packed_grants: its grants carry LeaseGrant.packed, not Lease messages.
    packed: bool = False
    # The stream's hello set leaf_runs (with packed_grants): it may be granted leaf runs.
    runs: bool = False
    # Hello.concurrency: handler slots of the worker (0: not said).
    concurrency: int = 0
    # Whether the last round that looked at this session left it credit: nothing leasable for it.
    starved: bool = False


def _ignore(leases: int, waited: float) -> None:
    pass


ROUND_BUDGET = 4_096
"""Leases one dispatch round grants at most, so one loop turn stays short (a few milliseconds)."""


REBALANCE_INTERVAL = 0.2
"""Seconds between two looks for running leaves to split (dynamic rebalancing)."""


def _take_unsent(session: Session) -> list[int]:
    """Remove the grants queued on ``session`` but not yet sent; their fences. Other messages stay, in order."""
    kept: list[worker_pb2.WorkResponse | None] = []
    unsent: list[int] = []
    while not session.out.empty():
        msg = session.out.get_nowait()
        if msg is not None and msg.HasField("grant"):
            unsent.extend(lease.fence for lease in msg.grant.leases)
            unsent.extend(msg.grant.packed.fences)
        else:
            kept.append(msg)
    for msg in kept:
        session.out.put_nowait(msg)
    return unsent


class Dispatcher:
    """Matches lease credit with available work.

    Args:
        core: Where leases come from.
        on_grant: Telemetry: called per grant message with its leases and the seconds since the
            credit it answers was asked for.
        max_credit: Most credit one stream holds (credit asked for beyond it is not kept).
    """

    def __init__(
        self, core: Core, *, on_grant: Callable[[int, float], None] = _ignore, max_credit: int = 10_000
    ) -> None:
        self._core = core
        self._max_credit = max_credit
        # Where the next round starts among the sessions: a round that stops at its budget goes on
        # with the next session next time, so no stream waits behind the others for ever.
        self._next = 0
        self._sessions: dict[int, Session] = {}
        self._scheduled = False
        # Whether a round could grant something: work may have appeared, or credit did.
        self._work = True
        self._want = False
        self._stopped = False
        self._held = False
        self._ended = False
        self._on_grant = on_grant
        self._rebalance_at = 0.0

    def add(self, session: Session) -> None:
        self._sessions[id(session)] = session
        if self._ended:
            # A stream whose hello came after the others were ended (shutdown): end it too.
            session.out.put_nowait(None)

    def remove(self, session: Session) -> None:
        self._sessions.pop(id(session), None)

    def queues(self) -> set[str]:
        """The queues the connected workers take leases from."""
        return {queue for session in self._sessions.values() for queue in session.queues}

    def end_streams(self) -> None:
        """End every stream and waiting unary call (shutdown), and any added later: each gets the end marker."""
        self._ended = True
        for session in self._sessions.values():
            session.out.put_nowait(None)

    def withdraw(self, session: Session) -> None:
        """``session`` takes back the credit it has not used."""
        session.credits = 0

    def close(self, session: Session) -> None:
        """``session``'s worker half-closed (it sends nothing more, so it cannot give leases back):
        no more grants, and grants queued but not yet sent are taken back as if never granted."""
        self.remove(session)
        unsent = _take_unsent(session)
        if unsent:
            self._core.unsent(unsent, time.time())
            self.work_available()

    def stop(self) -> None:
        """Grant nothing more (shutdown): no round runs from now on, and grants queued but not yet
        sent are taken back as if never granted. Streams stay open for the answers they are owed."""
        self._stopped = True
        unsent = [fence for session in self._sessions.values() for fence in _take_unsent(session)]
        if unsent:
            self._core.unsent(unsent, time.time())

    def credit(self, session: Session, count: int) -> None:
        """``session`` wants ``count`` more leases (it holds at most ``max_credit`` at once)."""
        if session.credits <= 0:
            session.waiting_since = time.time()
        session.credits = min(session.credits + count, self._max_credit)
        self._want = True
        self.poke()

    def work_available(self) -> None:
        """Leases may have become available (the core calls this): run a round soon."""
        self._work = True
        self.poke()

    def hold(self, held: bool) -> None:
        """Grant nothing while ``held`` (the store cannot write: a lease granted now could not be
        recorded, and workers running ahead would only pile up results nobody can acknowledge);
        go on as soon as it is released."""
        self._held = held
        if not held:
            self.credit_changed()

    def credit_changed(self) -> None:
        """Something that limited the last round (fences running out) is gone: try again."""
        self._want = True
        self.poke()

    def poke(self) -> None:
        """Run a dispatch round soon (coalesced: many pokes, one round)."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._round)

    def _round(self) -> None:
        self._scheduled = False
        if self._stopped or self._held or not (self._work or self._want):
            return
        self._work = False
        self._want = False
        core = self._core
        now = time.time()
        # Jobs whose leases could not be encoded this round: passed over until the next one.
        broken: set[str] = set()
        sessions = list(self._sessions.values())
        first = self._next % len(sessions) if sessions else 0
        budget = ROUND_BUDGET
        for turn, session in enumerate(sessions[first:] + sessions[:first]):
            if budget <= 0:
                # One loop turn does a bounded amount of work: the next round, soon, goes on
                # from this session.
                self._next = first + turn
                self._want = True
                self.poke()
                break
            if session.credits <= 0:
                session.starved = False
                continue
            # Built in place: WorkResponse(grant=...) would copy the whole grant once more.
            response = worker_pb2.WorkResponse()
            grant = response.grant
            add = self._add_packed if session.packed else self._add
            granted = 0
            while session.credits > granted and granted < budget:
                wanted = min(session.credits, budget) - granted
                leases = core.lease(session.queues, wanted, now, session.worker_id, broken, runs=session.runs)
                if not leases:
                    break
                added, gave_back = add(session, grant, leases, broken)
                granted += added
                if not gave_back:
                    break
            if granted:
                session.credits -= granted
                budget -= granted
                session.out.put_nowait(response)
                self._on_grant(granted, max(0.0, now - session.waiting_since))
                # Credit left over waits from now on.
                session.waiting_since = now
            # Credit left while the round still had budget: nothing leasable for this session.
            session.starved = session.credits > 0 and budget > 0
        else:
            if budget <= 0:
                self._want = True
                self.poke()
        # Grants need no prompt write (a lost grant only re-runs a leaf): the ticker's write takes them.

    def rebalance(self, now: float) -> None:
        """Dynamic splits: when workers wait with a free handler slot (credit the last round could
        not use, and fewer leases than their concurrency), have the core propose splits of running splittable leaves of
        their queues, and send each SHRINK to its holder at once (unasked, in a heartbeat answer
        of its own; a holder without a stream here gets it with its next heartbeat answer)."""
        core = self._core
        if self._stopped or self._held or not core.splittable or now < self._rebalance_at:
            return
        # At most a few times a second: a proposal is answered within a round trip anyway.
        self._rebalance_at = now + REBALANCE_INTERVAL
        sessions = [s for s in self._sessions.values() if s.credits > 0 and s.starved]
        if not sessions:
            return
        held = core.leases.holder_counts()
        idle = {
            queue
            for s in sessions
            if not s.concurrency or held.get(s.worker_id, 0) < s.concurrency
            for queue in s.queues
        }
        if not idle:
            return
        for holder, fence, new_end in core.propose_splits(idle, now):
            stream = next(
                (s for s in self._sessions.values() if s.said_hello and s.worker_id == holder), None
            )
            if stream is not None:
                directive = worker_pb2.Directive(
                    fence=fence, action=worker_pb2.DIRECTIVE_ACTION_SHRINK, new_end=new_end
                )
                answer = worker_pb2.HeartbeatResponse(directives=[directive])
                stream.out.put_nowait(worker_pb2.WorkResponse(heartbeat=answer))

    def revocable(self, fences: list[int], holder: str) -> set[int]:
        """Of ``fences`` (leases ``holder`` said it has not started), those to take back now.

        A lease is taken back for another worker of its queue that is idle: its stream has credit
        the last round could not use (nothing leasable for it) and it holds fewer leases than its
        handler slots. Each idle slot takes one lease, so a worker is not robbed for nothing; the
        holder gives them back unrun and the next round grants them to the idle worker.
        """
        idle = [
            s
            for s in self._sessions.values()
            if s.starved and s.credits > 0 and s.concurrency and s.worker_id != holder
        ]
        if not idle:
            return set()
        leases = self._core.leases
        held = leases.holder_counts()  # O(live leases), only while some worker is idle
        # Free slots and queues per idle worker (one entry for a worker with several streams).
        free: dict[str, list[int]] = {}
        queues: dict[str, tuple[str, ...]] = {}
        for s in idle:
            slots = min(s.credits, s.concurrency - held.get(s.worker_id, 0))
            if slots > 0 and slots > free.get(s.worker_id, [0])[0]:
                free[s.worker_id] = [slots]
                queues[s.worker_id] = s.queues
        out: set[int] = set()
        for fence in fences:
            lease = leases.get(fence)
            if lease is None or lease.kind is not LeaseKind.LEAF:
                continue
            for worker, left in free.items():
                if left[0] > 0 and lease.queue in queues[worker]:
                    left[0] -= 1
                    out.add(fence)
                    break
        return out

    def _add(
        self,
        session: Session,
        grant: worker_pb2.LeaseGrant,
        leases: list[Lease],
        broken: set[str],
    ) -> tuple[int, bool]:
        """Add ``leases`` to ``grant`` as ``Lease`` messages; a lease that cannot be encoded is given
        back and its job added to ``broken``. Returns how many were added, and whether any lease was
        given back (worth leasing again)."""
        jobs = self._core.jobs
        unsent: list[int] = []
        for lease in leases:
            job = jobs[lease.job_id]
            if job.id in broken:
                unsent.append(lease.fence)
                continue
            try:
                lease_to_proto(lease, job, grant.leases.add())
            except Exception:
                # A defect, never an expected path (specs are validated): log it, keep the round.
                log.exception("cannot encode a lease of job %s; giving its leases back", job.id)
                del grant.leases[-1]
                broken.add(job.id)
                unsent.append(lease.fence)
                continue
            if job.id not in session.sent_jobs:
                session.sent_jobs.add(job.id)
                grant.jobs.append(job_info(job))
        if unsent:
            self._core.unsent(unsent, time.time())
        return len(leases) - len(unsent), bool(unsent)

    def _add_packed(
        self,
        session: Session,
        grant: worker_pb2.LeaseGrant,
        leases: list[Lease],
        broken: set[str],
    ) -> tuple[int, bool]:
        """As :meth:`_add`, into the columns of ``grant.packed``, a run of one job at a time: a run
        that cannot be packed is cut back out of the columns and given back, its job ``broken``."""
        packed = grant.packed
        unsent: list[int] = []
        for job_id, first, stop in job_runs(leases):
            if job_id not in broken:
                marks = packed_marks(packed)
                try:
                    pack_run(job_id, leases, first, stop, packed)
                except Exception:
                    # A defect, never an expected path (specs are validated): log it, keep the round.
                    log.exception("cannot encode a lease of job %s; giving its leases back", job_id)
                    packed_truncate(packed, marks)
                    broken.add(job_id)
                else:
                    if job_id not in session.sent_jobs:
                        session.sent_jobs.add(job_id)
                        grant.jobs.append(job_info(self._core.jobs[job_id]))
                    continue
            unsent.extend(lease.fence for lease in leases[first:stop])
        if unsent:
            self._core.unsent(unsent, time.time())
        return len(leases) - len(unsent), bool(unsent)

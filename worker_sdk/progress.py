"""Rich rendering for the admin CLI: job summaries, job tables, range trees, event lines and the
live progress display of ``parcelo job watch``.

Everything here is pure: functions take protobuf messages (and, for rates, explicit times) and
return strings or rich renderables, so they are tested without a coordinator or a terminal.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from parcelo.v1 import jobs_pb2, types_pb2, worker_pb2

RATE_WINDOW = 10.0
"""Seconds of stats samples the throughput is averaged over: smooth, yet quick to follow changes."""

_STATUS_STYLES = {
    "pending": "blue",
    "running": "yellow",
    "paused": "cyan",
    "completed": "green",
    "done": "green",
    "skipped": "bright_black",
    "failed": "red",
    "error": "red",
    "cancelled": "magenta",
}


def job_status_name(status: int) -> str:
    """``JOB_STATUS_RUNNING`` -> ``"running"`` (``"unknown"`` for values this client does not know)."""
    try:
        return types_pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_").lower()  # type: ignore[arg-type]
    except ValueError:
        return "unknown"


def node_status_name(status: int) -> str:
    """``NODE_STATUS_DONE`` -> ``"done"``."""
    try:
        return types_pb2.NodeStatus.Name(status).removeprefix("NODE_STATUS_").lower()  # type: ignore[arg-type]
    except ValueError:
        return "unknown"


def event_type_name(event_type: int) -> str:
    """``EVENT_TYPE_NODE_FAILED`` -> ``"node_failed"``."""
    try:
        return types_pb2.EventType.Name(event_type).removeprefix("EVENT_TYPE_").lower()  # type: ignore[arg-type]
    except ValueError:
        return f"type_{event_type}"


def styled_status(name: str) -> Text:
    """A status name coloured by what it means (green done, red failed, ...)."""
    return Text(name, style=_STATUS_STYLES.get(name, ""))


def format_time(ts: Timestamp, *, short: bool = False) -> str:
    """A timestamp in local time: ISO 8601 to the second, or without the offset when ``short``.

    Returns ``"-"`` when the timestamp is unset.
    """
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    local = ts.ToDatetime(tzinfo=UTC).astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S") if short else local.isoformat(timespec="seconds")


def format_duration(seconds: float) -> str:
    """``3725.2`` -> ``"1h02m05s"``; sub-minute values keep one decimal (``"4.2s"``)."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s"


def compact(value: float) -> str:
    """A count with an SI suffix, three significant digits: ``1234567`` -> ``"1.23M"``."""
    for suffix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}" if isinstance(value, float) and not value.is_integer() else f"{int(value)}"


def progress_fraction(stats: types_pb2.JobStats) -> float:
    """Share of the range processed or skipped, in [0, 1] (0 for an empty range)."""
    if stats.range_total == 0:
        return 0.0
    return min(1.0, (stats.range_processed + stats.range_skipped) / stats.range_total)


@lru_cache(maxsize=4096)
def count_leaves(width: int, max_range_size: int) -> int:
    """Number of leaves of a range of ``width`` ids under the contract's splitting rule.

    A node wider than ``max_range_size`` splits at ``width // 2``; the widths of one level differ by
    at most one, so with the cache this takes O(depth) calls even for 64-bit ranges.
    """
    if width == 0 or max_range_size <= 0:
        return 0
    if width <= max_range_size:
        return 1
    half = width // 2
    return count_leaves(half, max_range_size) + count_leaves(width - half, max_range_size)


def final_line(job: types_pb2.Job) -> str:
    """The one-line outcome printed by ``job wait`` and ``job watch``."""
    status = job_status_name(job.status)
    line = f"job {job.id} {status}"
    begin = job.started_at if job.HasField("started_at") else job.created_at
    if job.HasField("finished_at") and begin.seconds:
        took = job.finished_at.ToDatetime() - begin.ToDatetime()
        line += f" in {format_duration(max(0.0, took.total_seconds()))}"
    if job.reason:
        line += f": {job.reason}"
    return line


def _nodes_text(stats: types_pb2.JobStats) -> str:
    return (
        f"{stats.total_nodes} total: {stats.pending_nodes} pending, {stats.running_nodes} running, "
        f"{stats.done_nodes} done, {stats.skipped_nodes} skipped, {stats.error_nodes} error"
    )


def _progress_text(stats: types_pb2.JobStats) -> str:
    return (
        f"{progress_fraction(stats) * 100:.1f}% ({stats.range_processed} processed + "
        f"{stats.range_skipped} skipped of {stats.range_total})"
    )


def job_summary(job: types_pb2.Job) -> Table:
    """The key/value table printed by ``job get``."""
    spec, stats = job.spec, job.stats
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, str | Text]] = [
        ("id", job.id),
        ("status", styled_status(job_status_name(job.status))),
        ("queue", spec.queue or "default"),
        ("range", f"[{spec.range.start}, {spec.range.end})"),
        ("max_range_size", str(spec.max_range_size)),
        ("progress", _progress_text(stats)),
        ("nodes", _nodes_text(stats)),
        ("active leases", str(stats.active_leases)),
        ("failed attempts", str(stats.failed_attempts)),
        ("dynamic splits", str(stats.dynamic_splits)),
        ("priority", str(spec.priority)),
    ]
    if spec.pruning:
        rows.append(("pruning", "on"))
    if spec.labels:
        rows.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(spec.labels.items()))))
    if spec.params_json:
        rows.append(("params", spec.params_json))
    if spec.HasField("deadline"):
        rows.append(("deadline", format_time(spec.deadline)))
    rows += [
        ("created", format_time(job.created_at)),
        ("started", format_time(job.started_at)),
        ("updated", format_time(job.updated_at)),
        ("finished", format_time(job.finished_at)),
    ]
    if job.reason:
        rows.append(("reason", job.reason))
    if spec.reduce > types_pb2.REDUCE_NONE:
        rows.append(("reduce", types_pb2.Reduce.Name(spec.reduce).removeprefix("REDUCE_").lower()))
        shown = job.result_json or "none yet"
        rows.append(("result", f"{shown} (partial)" if job.result_partial else shown))
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def jobs_table(jobs: list[types_pb2.Job]) -> Table:
    """The table printed by ``job list``, one row per job."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (
        ("ID", "left"),
        ("STATUS", "left"),
        ("QUEUE", "left"),
        ("PROGRESS", "right"),
        ("RANGE", "left"),
        ("NODES", "right"),
        ("ERRORS", "right"),
        ("CREATED", "left"),
    ):
        # Ids are what users copy from this table: never squeeze them out, fold them if need be.
        table.add_column(
            name,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=name != "ID",
            overflow="fold" if name == "ID" else "ellipsis",
            min_width=min(36, max((len(j.id) for j in jobs), default=2)) if name == "ID" else None,
        )
    for job in jobs:
        stats = job.stats
        table.add_row(
            job.id,
            styled_status(job_status_name(job.status)),
            job.spec.queue or "default",
            f"{progress_fraction(stats) * 100:.1f}%",
            f"[{job.spec.range.start}, {job.spec.range.end})",
            f"{stats.done_nodes + stats.skipped_nodes}/{stats.total_nodes}",
            str(stats.error_nodes),
            format_time(job.created_at, short=True),
        )
    return table


def workers_table(workers: list[worker_pb2.WorkerInfo], now: float) -> Table:
    """The table printed by ``worker list``, one row per connected worker."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in (
        "WORKER",
        "ADDRESS",
        "QUEUES",
        "SDK",
        "CONC",
        "LEASES",
        "DONE",
        "FAILED",
        "CONNECTED",
        "BEAT",
    ):
        table.add_column(name, justify="right" if name in ("CONC", "LEASES", "DONE", "FAILED") else "left")
    for info in workers:
        beat = info.last_heartbeat_at
        since = now - (beat.seconds + beat.nanos / 1e9)
        table.add_row(
            info.worker_id,
            info.address,
            ",".join(info.queues),
            info.sdk or "-",
            str(info.concurrency or "-"),
            str(info.leases_held),
            str(info.leaves_completed),
            str(info.leaves_failed),
            format_time(info.connected_at, short=True),
            f"{format_duration(max(0.0, since))} ago" if beat.seconds else "-",
        )
    return table


def _node_label(node: types_pb2.TreeNode) -> Text:
    text = Text(f"[{node.range.start}, {node.range.end}) ")
    text.append_text(styled_status(node_status_name(node.status)))
    details = []
    if node.is_leaf:
        details.append("leaf")
    if node.attempts:
        details.append(f"attempts={node.attempts}")
    if node.cursor:
        details.append(f"cursor={node.cursor}")
    if node.worker_id:
        details.append(f"held by {node.worker_id}")
    if node.collapsed:
        details.append("collapsed")
    if node.truncated:
        details.append("children not shown")
    if details:
        text.append(" " + " ".join(details), style="dim")
    if node.last_error:
        text.append(f" last_error: {node.last_error}", style="red")
    if node.message:
        text.append(f" progress: {node.message}", style="cyan")
    return text


def job_tree(response: jobs_pb2.GetJobTreeResponse) -> Tree:
    """The rich tree printed by ``job tree``: one line per node, children in range order."""
    job = response.job
    label = Text(f"job {job.id} ")
    label.append_text(styled_status(job_status_name(job.status)))
    if job.stats.dynamic_splits:
        label.append(f"  {job.stats.dynamic_splits} dynamic splits", style="dim")
    tree = Tree(label)
    if response.HasField("root"):
        # An explicit stack rather than recursion: a deep tree must not hit the recursion limit.
        stack: list[tuple[Tree, types_pb2.TreeNode]] = [(tree, response.root)]
        while stack:
            parent, node = stack.pop()
            branch = parent.add(_node_label(node))
            stack.extend((branch, child) for child in reversed(node.children))
    return tree


def event_line(event: types_pb2.JobEvent) -> str:
    """One line of ``job events``: seq, time, type, then what the event carries."""
    parts = [f"{event.seq:>6}", format_time(event.time), f"{event_type_name(event.type):<15}"]
    if event.HasField("range"):
        parts.append(f"[{event.range.start}, {event.range.end})")
    if event.attempt:
        parts.append(f"attempt={event.attempt}")
    if event.new_end:
        parts.append(f"new_end={event.new_end}")
    if event.status:
        parts.append(f"status={job_status_name(event.status)}")
    if event.HasField("stats"):
        stats = event.stats
        parts.append(
            f"progress={progress_fraction(stats) * 100:.1f}% nodes={stats.done_nodes + stats.skipped_nodes}"
            f"/{stats.total_nodes} errors={stats.error_nodes} leases={stats.active_leases}"
        )
    if event.message:
        parts.append(f"message={event.message!r}")
    return " ".join(parts)


class WatchState:
    """What ``job watch`` shows: the latest job and stats, plus throughput over a sliding window.

    Samples are timed by the event's own timestamp when it has one, so events replayed from the
    coordinator's log give the rates they had, not the speed of the replay.

    Args:
        job: The job as first fetched with ``GetJob``.
        now: The current time (seconds since the epoch) for the first sample.
    """

    def __init__(self, job: types_pb2.Job, now: float) -> None:
        self.job = types_pb2.Job()
        self.job.CopyFrom(job)
        self._samples: deque[tuple[float, int]] = deque()
        self._add_sample(now, job.stats)

    @property
    def stats(self) -> types_pb2.JobStats:
        """Latest known stats."""
        return self.job.stats

    def update_job(self, job: types_pb2.Job, now: float) -> None:
        """Take a freshly polled job."""
        self.job.CopyFrom(job)
        self._add_sample(now, job.stats)

    def update_event(self, event: types_pb2.JobEvent, now: float) -> None:
        """Take a STATS_UPDATED or JOB_* event; others are ignored."""
        when = event.time.ToDatetime(tzinfo=UTC).timestamp() if event.time.seconds else now
        if event.status:
            self.job.status = event.status
        if event.type in (types_pb2.EVENT_TYPE_JOB_FAILED, types_pb2.EVENT_TYPE_JOB_CANCELLED):
            self.job.reason = event.message
        if event.HasField("stats"):
            self.job.stats.CopyFrom(event.stats)
            self._add_sample(when, event.stats)

    def _add_sample(self, when: float, stats: types_pb2.JobStats) -> None:
        done = stats.range_processed + stats.range_skipped
        if self._samples and when < self._samples[-1][0]:
            # Out-of-order clocks (poll vs event time): restart the window rather than go backwards.
            self._samples.clear()
        self._samples.append((when, done))
        while len(self._samples) > 2 and self._samples[0][0] < when - RATE_WINDOW:
            self._samples.popleft()

    def ids_per_second(self) -> float:
        """Ids processed or skipped per second over the window; 0 when unknown or not running.

        A finished job with both timestamps shows its average over the whole run instead.
        """
        job = self.job
        if job.HasField("finished_at") and job.HasField("started_at"):
            took = (job.finished_at.ToNanoseconds() - job.started_at.ToNanoseconds()) / 1e9
            done = job.stats.range_processed + job.stats.range_skipped
            return done / took if took > 0 else 0.0
        if job.status != types_pb2.JOB_STATUS_RUNNING or len(self._samples) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def leaves_per_second(self) -> float:
        """Leaves finished per second, derived from the id rate and the average leaf width.

        JobStats counts inner nodes too, so the leaf count comes from the splitting rule instead:
        the whole tree has :func:`count_leaves` leaves over ``range_total`` ids.
        """
        total = self.stats.range_total
        leaves = count_leaves(total, self.job.spec.max_range_size)
        return self.ids_per_second() * leaves / total if total else 0.0

    def eta(self) -> timedelta | None:
        """Time left at the current rate; ``None`` when the rate is unknown or the job not running."""
        if self.job.status != types_pb2.JOB_STATUS_RUNNING:
            return None
        rate = self.ids_per_second()
        if rate <= 0:
            return None
        left = self.stats.range_total - self.stats.range_processed - self.stats.range_skipped
        return timedelta(seconds=max(0.0, left / rate))

    def render(self) -> RenderableType:
        """The live display: header, bar, throughput line and node counts."""
        stats = self.stats
        header = Text(f"job {self.job.id} ", style="bold")
        header.append_text(styled_status(job_status_name(self.job.status)))
        header.append(f"  queue {self.job.spec.queue or 'default'}", style="dim")
        done = stats.range_processed + stats.range_skipped
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(stats.range_total, 1), completed=done, width=40),
            Text(f"{progress_fraction(stats) * 100:5.1f}%"),
            Text(f"{compact(done)}/{compact(stats.range_total)} ids"),
        )
        eta = self.eta()
        speed = Text(
            f"{compact(self.ids_per_second())} ids/s  ~{compact(self.leaves_per_second())} leaves/s  "
            f"ETA {format_duration(eta.total_seconds()) if eta is not None else '-'}"
        )
        nodes = Text(
            f"nodes {_nodes_text(stats)}  leases {stats.active_leases}  "
            f"failed attempts {stats.failed_attempts}",
            style="dim",
        )
        return Group(header, bar, speed, nodes)


def now_seconds() -> float:
    """Wall-clock seconds since the epoch, the clock event timestamps use."""
    return datetime.now(UTC).timestamp()

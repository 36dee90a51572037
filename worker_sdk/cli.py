"""``parcelo``: the admin CLI of a Parcelo coordinator.

Exit codes: 0 success; 1 the coordinator answered with an error or could not be reached, the
job waited on failed or was cancelled, or ``health`` found it not serving; 2 bad command line
(click's usage errors and local checks); 3 ``job wait`` timed out.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, NoReturn

import click
import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.live import Live

from parcelo import defaults, progress
from parcelo.channel import TLS
from parcelo.cli_options import (
    log_options,
    parse_duration,
    setup_logging,
    target_option,
    tls_from_flags,
    tls_options,
    token_option,
)
from parcelo.client import POLL_INTERVAL, TERMINAL_STATUSES, Client
from parcelo.errors import ConfigError, PermissionDenied, RpcError, Unauthenticated, Unavailable
from parcelo.options import REDUCES, JobOptions, RetryPolicy
from parcelo.v1 import types_pb2

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3

_STATUS_CHOICES = ["pending", "running", "paused", "completed", "failed", "cancelled"]

# What `job watch` listens to: stats and job lifecycle, never per-node events (one per leaf).
_WATCH_EVENTS = [
    value
    for name, value in types_pb2.EventType.items()
    if name.startswith("EVENT_TYPE_JOB_") or name == "EVENT_TYPE_STATS_UPDATED"
]


class CliError(click.ClickException):
    """A failure reported as one ``error: ...`` line on stderr (exit 1), without click's usage banner."""

    exit_code = EXIT_FAILED

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class BadInput(CliError):
    """A command line that local checks reject before any call (exit 2, like click's usage errors)."""

    exit_code = EXIT_USAGE


class WaitTimeout(CliError):
    """``job wait`` gave up (exit 3)."""

    exit_code = EXIT_TIMEOUT


def rpc_error_message(err: RpcError, target: str) -> str:
    """The one line shown for a coordinator error (without the ``error:`` prefix)."""
    if isinstance(err, Unavailable):
        if "handshake" in err.message.lower():
            return (
                f"cannot reach coordinator at {target} ({err.code.name}: TLS handshake failed; check --tls-*)"
            )
        return f"cannot reach coordinator at {target} ({err.code.name})"
    if isinstance(err, Unauthenticated):
        return (
            f"coordinator at {target} wants a valid token ({err.code.name}: {err.message}); "
            "give it with --token or PARCELO_TOKEN"
        )
    if isinstance(err, PermissionDenied):
        return f"the token may not do this ({err.code.name}: {err.message})"
    if err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"coordinator at {target} did not answer in time (DEADLINE_EXCEEDED)"
    return str(err)


def exit_code_for(job: types_pb2.Job) -> int:
    """Exit code of ``job wait``/``job watch`` for a job that reached a terminal status."""
    return EXIT_OK if job.status == types_pb2.JOB_STATUS_COMPLETED else EXIT_FAILED


def parse_labels(items: tuple[str, ...]) -> dict[str, str]:
    """``("a=1", "b=x=y")`` -> ``{"a": "1", "b": "x=y"}``."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInput(f"--label expects KEY=VALUE, got {item!r}")
        labels[key] = value
    return labels


def parse_deadline(text: str | None) -> datetime | None:
    """ISO 8601 instant; without an offset it is local time."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError as err:
        raise BadInput(f"--deadline is not an ISO 8601 time: {err}") from err


def seconds(value: float | None) -> timedelta | None:
    """A ``--... SECONDS`` option as a timedelta (``None`` stays unset)."""
    return None if value is None else timedelta(seconds=value)


def to_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data, field names as in the proto."""
    return MessageToDict(message, preserving_proto_field_name=True)


def echo_json(data: Any, *, compact: bool = False) -> None:
    """Print data as JSON: indented, or on one line with ``compact``."""
    click.echo(json.dumps(data, indent=None if compact else 2, sort_keys=False))


class _Obj:
    """State shared by subcommands: where the coordinator is, how to reach it, the console to print on."""

    def __init__(self, target: str, tls: TLS | None, token: str | None) -> None:
        self.target = target
        self.tls = tls
        self.token = token
        self.console = Console(highlight=False, soft_wrap=False)
        if not self.console.is_terminal:
            # Piped output would be cut to 80 columns; tables only take the width they need anyway.
            self.console.width = 250

    @contextmanager
    def client(self) -> Iterator[Client]:
        """A connected client; coordinator errors become one ``error:`` line and exit 1."""
        try:
            with Client(self.target, tls=self.tls, token=self.token) as client:
                yield client
        except RpcError as err:
            raise CliError(rpc_error_message(err, self.target)) from err
        except ConfigError as err:
            raise BadInput(str(err)) from err


pass_obj = click.make_pass_decorator(_Obj)
PositiveSeconds = click.FloatRange(min=0, min_open=True)
Uint64 = click.IntRange(0, 2**64 - 1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@target_option
@tls_options
@token_option
@log_options("WARNING")
@click.version_option(package_name="parcelo")
@click.pass_context
def cli(
    ctx: click.Context,
    target: str,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    token: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Administer the jobs of a Parcelo coordinator, and the coordinator itself.

    Exit codes: 0 ok; 1 coordinator error, unreachable coordinator, (wait/watch) job failed or
    cancelled, or (health) not serving; 2 bad command line; 3 wait timed out.
    """
    setup_logging(log_level, log_format)
    ctx.obj = _Obj(target, tls_from_flags(tls_ca, tls_cert, tls_key), token)


@cli.group()
def job() -> None:
    """Create, inspect, steer and watch jobs."""


@cli.group()
def admin() -> None:
    """Look after the coordinator itself: backups."""


@admin.command("backup")
@click.option(
    "--to",
    "to_dir",
    required=True,
    metavar="DIR",
    help="Absolute path, on the coordinator's host, of a new folder for the backup.",
)
@pass_obj
def backup(obj: _Obj, to_dir: str) -> None:
    """Write an online backup of the coordinator's store to DIR; return once it is complete.

    The backup is a RocksDB checkpoint holding everything acknowledged before the call;
    `parcelo-coordinator --data-dir DIR` starts from it.
    """
    with obj.client() as client:
        written = client.backup(to_dir)
    click.echo(f"backup written to {written.path} ({written.bytes:,} bytes in {written.files} files)")


def _seconds_flag(ctx: click.Context, param: click.Parameter, value: float | None) -> timedelta | None:
    return seconds(value)


def _labels_flag(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    return parse_labels(value)


def _deadline_flag(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    return parse_deadline(value)


def parse_run_after(text: str | None) -> datetime | timedelta | None:
    """``--run-after``: an ISO 8601 time (local without an offset) or ``+DURATION`` from now."""
    if text is None:
        return None
    if text.startswith("+"):
        try:
            return parse_duration(text[1:])
        except ValueError as err:
            raise BadInput(f"--run-after: {err}") from None
    try:
        return datetime.fromisoformat(text)
    except ValueError as err:
        raise BadInput(f"--run-after is neither an ISO 8601 time nor +DURATION: {err}") from None


def _run_after_flag(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> datetime | timedelta | None:
    return parse_run_after(value)


# `job create`'s flags are named (their Python names) for the fields of JobOptions, RetryPolicy's
# by their own names, and hand over typed values: the command builds the options without listing
# them, so a new job option is one flag here.
_RETRY_FIELDS = frozenset(f.name for f in dataclasses.fields(RetryPolicy))


def job_options(values: Mapping[str, Any]) -> JobOptions:
    """The :class:`JobOptions` of ``job create``'s flag values (keyed by the flags' Python names)."""
    retry = {name: value for name, value in values.items() if name in _RETRY_FIELDS}
    rest = {name: value for name, value in values.items() if name not in _RETRY_FIELDS}
    return JobOptions(**rest, retry=RetryPolicy(**retry))


def option_flags(command: click.Command) -> dict[str, str]:
    """Each option path of :class:`JobOptions` (``"lease_ttl"``, ``"retry.jitter"``) -> its flag."""
    flags: dict[str, str] = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name:
            path = f"retry.{param.name}" if param.name in _RETRY_FIELDS else param.name
            flags[path] = param.opts[0]
    return flags


def flag_message(err: ConfigError, flags: Mapping[str, str]) -> str:
    """An options error in the words of the command line.

    ``end: must be greater than start`` becomes ``--end must be greater than --start``. Only the
    options' own words are translated: after a colon comes text quoted from elsewhere (a JSON error).
    """
    if err.field is None or err.field not in flags:
        return str(err)
    problem = str(err).removeprefix(f"{err.field}: ")
    words, sep, quoted = problem.partition(": ")
    names = "|".join(re.escape(name) for name in sorted(flags, key=len, reverse=True))
    words = re.sub(rf"(?<![\w.])({names})(?![\w.])", lambda m: flags[m.group(1)], words)
    return f"{flags[err.field]} {words}{sep}{quoted}"


@job.command("create")
@click.option("--start", type=Uint64, required=True, help="First id of the range.")
@click.option("--end", type=Uint64, required=True, help="One past the last id of the range.")
@click.option("--max-range-size", type=click.IntRange(min=1), required=True, help="Widest range of one leaf.")
@click.option("--queue", help="Queue whose workers run the job [default: default].")
@click.option("--params", help="JSON handed to every handler call.")
@click.option(
    "--lease-ttl",
    type=PositiveSeconds,
    callback=_seconds_flag,
    metavar="SECONDS",
    help="Lease expiry without heartbeat.",
)
@click.option("--id", "job_id", help="Job id (idempotent: same id and spec returns the existing job).")
@click.option("--request-id", help="Idempotency key.")
@click.option("--max-attempts", type=click.IntRange(min=1), help="Attempts per leaf, the first included.")
@click.option(
    "--initial-backoff",
    type=PositiveSeconds,
    callback=_seconds_flag,
    metavar="SECONDS",
    help="Delay before a retry.",
)
@click.option(
    "--max-backoff",
    type=PositiveSeconds,
    callback=_seconds_flag,
    metavar="SECONDS",
    help="Upper bound of retry delays.",
)
@click.option("--backoff-multiplier", type=click.FloatRange(min=1), help="Retry delay growth factor.")
@click.option("--jitter", type=click.FloatRange(0, 1), help="Random fraction of each retry delay.")
@click.option("--pruning", is_flag=True, help="Ask workers' should_process before splitting or running.")
@click.option(
    "--leaf-timeout",
    type=PositiveSeconds,
    callback=_seconds_flag,
    metavar="SECONDS",
    help="Longest time of one attempt.",
)
@click.option(
    "--deadline",
    callback=_deadline_flag,
    metavar="ISO8601",
    help="Fail the job if not completed by then (local time).",
)
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first in a queue.")
@click.option("--paused", "start_paused", is_flag=True, help="Create the job paused; `job resume` starts it.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    callback=_labels_flag,
    metavar="KEY=VALUE",
    help="A label (repeatable).",
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(0, 2**32 - 1),
    default=0,
    help="Leaf leases held at once across all workers [default: 0, no limit].",
)
@click.option(
    "--max-leases-per-second",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Leases granted per second at most [default: 0, no limit].",
)
@click.option(
    "--burst", type=click.IntRange(0, 2**32 - 1), default=0, help="Rate limit's burst [default: the rate]."
)
@click.option("--weight", type=click.IntRange(1, 2**32 - 1), help="Share of its fairness key [default: 1].")
@click.option(
    "--fairness-key", help="Jobs of one key share one share (e.g. a tenant) [default: the job's id]."
)
@click.option(
    "--run-after",
    callback=_run_after_flag,
    metavar="ISO8601|+DURATION",
    help="No lease before then (e.g. 2030-01-01T00:00:00Z, +15m, +2h).",
)
@click.option(
    "--reduce",
    type=click.Choice(REDUCES),
    help="Combine the handlers' return values into the job's result [default: none].",
)
@click.option(
    "--min-range-size",
    type=Uint64,
    default=0,
    help="No dynamic or adaptive split makes a node narrower [default: 1].",
)
@click.option(
    "--target-leaf-seconds",
    type=PositiveSeconds,
    callback=_seconds_flag,
    metavar="SECONDS",
    help="Adaptive leaf size: split leaves estimated to run longer before leasing them [default: off].",
)
@click.option(
    "--rebalance/--no-rebalance",
    default=True,
    help="Split running leaves of handlers that claim (ctx.claim) when workers wait [default: on].",
)
@click.option(
    "--leaf-runs/--no-leaf-runs",
    default=True,
    help="Lease subtrees of short leaves as one unit to workers that run them [default: on].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the created job as JSON instead of its id.")
@pass_obj
def create(obj: _Obj, /, as_json: bool, **values: Any) -> None:
    """Create a job over [START, END) and print its id."""
    try:
        options = job_options(values)
    except ConfigError as err:
        raise BadInput(flag_message(err, option_flags(create))) from err
    with obj.client() as client:
        created = client.create_job(options)
    if as_json:
        echo_json(to_dict(created))
    else:
        click.echo(created.id)


@job.command("get")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the Job message as JSON.")
@pass_obj
def get(obj: _Obj, job_id: str, as_json: bool) -> None:
    """Show a job: status, range, progress, node counts, timestamps."""
    with obj.client() as client:
        found = client.get_job(job_id)
    if as_json:
        echo_json(to_dict(found))
    else:
        obj.console.print(progress.job_summary(found))


@job.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(_STATUS_CHOICES, case_sensitive=False),
    help="Only jobs in this status (repeatable).",
)
@click.option("--queue", help="Only jobs of this queue.")
@click.option(
    "--limit", type=click.IntRange(min=0), default=50, show_default=True, help="Most jobs shown; 0: all."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of Job messages.")
@pass_obj
def list_(obj: _Obj, statuses: tuple[str, ...], queue: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first.

    With --json the output is a JSON array (possibly empty) of Job objects, field names as in
    the proto; 64-bit counters are strings, as the protobuf JSON mapping has it.
    """
    wanted = [types_pb2.JobStatus.Value(f"JOB_STATUS_{s.upper()}") for s in statuses]
    page_size = min(limit, defaults.MAX_LIST_PAGE_SIZE) if limit else defaults.MAX_LIST_PAGE_SIZE
    jobs: list[types_pb2.Job] = []
    with obj.client() as client:
        for found in client.list_jobs(statuses=wanted, queue=queue, page_size=page_size):
            jobs.append(found)
            if limit and len(jobs) >= limit:
                break
    if as_json:
        echo_json([to_dict(j) for j in jobs])
    elif jobs:
        obj.console.print(progress.jobs_table(jobs))
    else:
        click.echo("no jobs", err=True)


def _print_status(changed: types_pb2.Job) -> None:
    click.echo(f"job {changed.id} {progress.job_status_name(changed.status)}")


@job.command("pause")
@click.argument("job_id")
@click.option("--release", is_flag=True, help="Also make running handlers checkpoint and give leaves back.")
@pass_obj
def pause(obj: _Obj, job_id: str, release: bool) -> None:
    """Stop handing out leases of a job."""
    with obj.client() as client:
        _print_status(client.pause_job(job_id, release=release))


@job.command("resume")
@click.argument("job_id")
@pass_obj
def resume(obj: _Obj, job_id: str) -> None:
    """Continue a paused (or created --paused) job."""
    with obj.client() as client:
        _print_status(client.resume_job(job_id))


@job.command("cancel")
@click.argument("job_id")
@click.option("--reason", default="", help="Why, recorded with the job.")
@pass_obj
def cancel(obj: _Obj, job_id: str, reason: str) -> None:
    """Cancel a job; running handlers are told to stop."""
    with obj.client() as client:
        _print_status(client.cancel_job(job_id, reason=reason))


@job.command("delete")
@click.argument("job_id")
@pass_obj
def delete(obj: _Obj, job_id: str) -> None:
    """Delete a finished job and all its records."""
    with obj.client() as client:
        client.delete_job(job_id)
    click.echo(f"job {job_id} deleted")


@job.command("retry")
@click.argument("job_id")
@pass_obj
def retry(obj: _Obj, job_id: str) -> None:
    """Retry a job's failed leaves.

    Error leaves go back to pending and a failed job runs again.
    """
    with obj.client() as client:
        _print_status(client.retry_failed(job_id))


@job.command("tree")
@click.argument("job_id")
@click.option(
    "--depth", type=click.IntRange(min=0), default=3, show_default=True, help="Deepest level shown (root: 0)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the GetJobTreeResponse as JSON.")
@pass_obj
def tree(obj: _Obj, job_id: str, depth: int, as_json: bool) -> None:
    """Show a job's range tree.

    One line per node: range, status, attempts, checkpoint cursor, last error.
    """
    with obj.client() as client:
        snapshot = client.get_tree(job_id, max_depth=depth)
    if as_json:
        echo_json(to_dict(snapshot))
    else:
        obj.console.print(progress.job_tree(snapshot))


@job.command("wait")
@click.argument("job_id")
@click.option("--timeout", type=PositiveSeconds, metavar="SECONDS", help="Give up after this long (exit 3).")
@click.option("--result", "show_result", is_flag=True, help="Then print the job's result (JSON) to stdout.")
@pass_obj
def wait(obj: _Obj, job_id: str, timeout: float | None, show_result: bool) -> None:
    """Wait until a job finishes.

    Prints the final status line; exits 0 if the job completed, 1 if it failed or was
    cancelled, 3 on timeout. With --result, the status line goes to stderr and the job's
    result (JSON, `null` for none) to stdout.
    """
    with obj.client() as client:
        try:
            final = client.wait(job_id, timeout=timeout)
        except TimeoutError:
            click.echo(f"job {job_id} still {progress.job_status_name(client.get_job(job_id).status)}")
            raise WaitTimeout(f"timed out after {timeout}s waiting for job {job_id}") from None
    click.echo(progress.final_line(final), err=show_result)
    if show_result:
        click.echo(final.result_json or "null")
    sys.exit(exit_code_for(final))


@job.command("result")
@click.argument("job_id")
@pass_obj
def result(obj: _Obj, job_id: str) -> None:
    """Print a job's result (JSON, `null` for none) and nothing else.

    Exits 0 if the job completed (the result is final), 1 if it failed or was cancelled, 3 if
    it is still running (the result printed is partial); `job wait ID --result` waits first.
    """
    with obj.client() as client:
        found = client.get_job(job_id)
    click.echo(found.result_json or "null")
    if found.status not in TERMINAL_STATUSES:
        click.echo(f"job {job_id} is {progress.job_status_name(found.status)}: partial result", err=True)
        sys.exit(EXIT_TIMEOUT)
    sys.exit(exit_code_for(found))


@job.command("watch")
@click.argument("job_id")
@pass_obj
def watch(obj: _Obj, job_id: str) -> None:
    """Show a job's live progress until it ends.

    A progress bar of processed+skipped ids, throughput (ids/s, leaves/s), ETA and node
    counts. Exits like `job wait`: 0 completed, 1 failed or cancelled.
    """
    with obj.client() as client:
        first = client.get_job(job_id)
        state = progress.WatchState(first, progress.now_seconds())
        if first.status not in TERMINAL_STATUSES:
            with Live(state.render(), console=obj.console, refresh_per_second=4, transient=False) as live:
                last = 0.0

                def refresh() -> None:
                    # A replay of thousands of retained events must not rebuild the display each time.
                    nonlocal last
                    if time.monotonic() - last >= 0.1:
                        last = time.monotonic()
                        live.update(state.render())

                _follow(client, state, refresh)
                # The last stats event may precede the final counters; the job itself has the last word.
                final = client.get_job(job_id)
                state.update_job(final, progress.now_seconds())
                live.update(state.render(), refresh=True)
            if not obj.console.is_terminal:
                # rich ends the live view with a newline only on a terminal.
                obj.console.line()
        else:
            final = first
            obj.console.print(state.render())
    click.echo(progress.final_line(final))
    sys.exit(exit_code_for(final))


def _follow(client: Client, state: progress.WatchState, refresh: Callable[[], None]) -> None:
    """Feed ``state`` from WatchJob until the job is terminal; poll GetJob if the stream is unusable."""
    job_id = state.job.id
    after = 0
    try:
        while True:
            for event in client.watch(job_id, after_seq=after, types=_WATCH_EVENTS):
                after = event.seq
                state.update_event(event, progress.now_seconds())
                refresh()
                # Replayed end events may predate a RetryFailed: confirm with the job itself.
                if event.status in TERMINAL_STATUSES and client.get_job(job_id).status in TERMINAL_STATUSES:
                    return
            current = client.get_job(job_id)
            state.update_job(current, progress.now_seconds())
            refresh()
            if current.status in TERMINAL_STATUSES:
                return
            time.sleep(POLL_INTERVAL)
    except RpcError as err:
        # Only a coordinator without WatchJob is worth polling; an unreachable one fails GetJob too.
        if err.code != grpc.StatusCode.UNIMPLEMENTED:
            raise
    while True:
        current = client.get_job(job_id)
        state.update_job(current, progress.now_seconds())
        refresh()
        if current.status in TERMINAL_STATUSES:
            return
        time.sleep(POLL_INTERVAL)


@job.command("events")
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep listening after the job has finished.")
@click.option("--after", type=Uint64, default=0, metavar="SEQ", help="Only events with a larger seq.")
@click.option("--json", "as_json", is_flag=True, help="One JSON JobEvent per line.")
@pass_obj
def events(obj: _Obj, job_id: str, follow: bool, after: int, as_json: bool) -> None:
    """Print a job's events.

    Retained events after --after, then live ones until the job ends (for ever with
    --follow). With --json, one JobEvent JSON object per line.
    """
    with obj.client() as client:
        for event in client.watch(job_id, after_seq=after, follow=follow):
            if as_json:
                echo_json(to_dict(event), compact=True)
            else:
                click.echo(progress.event_line(event))


@cli.group()
def worker() -> None:
    """See the workers connected to the coordinator."""


@worker.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of WorkerInfo messages.")
@pass_obj
def worker_list(obj: _Obj, as_json: bool) -> None:
    """List connected workers: address, queues, concurrency, leases held, leaves done and failed.

    With --json the output is a JSON array (possibly empty) of WorkerInfo objects, field names
    as in the proto.
    """
    with obj.client() as client:
        workers = client.list_workers()
    if as_json:
        echo_json([to_dict(w) for w in workers])
    elif workers:
        obj.console.print(progress.workers_table(workers, progress.now_seconds()))
    else:
        click.echo("no workers connected", err=True)


@cli.command("health")
@click.option("--service", default="", show_default=True, help='Service name to check ("": the server).')
@click.option(
    "--timeout",
    type=PositiveSeconds,
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up after.",
)
@pass_obj
def health(obj: _Obj, service: str, timeout: float) -> None:
    """Check the coordinator's gRPC health service (for container health checks and scripts).

    Prints the status; exits 0 when it is SERVING, 1 otherwise (NOT_SERVING, unknown service,
    unreachable coordinator).
    """
    with obj.client() as client:
        status = client.health(service, timeout=timeout)
    name = f"service {service!r}" if service else "coordinator"
    if status != "SERVING":
        raise CliError(f"{name} at {obj.target} is {status}")
    click.echo(f"{name} at {obj.target} is SERVING")


# The scheduling commands build on the helpers above and add themselves to the groups.
import parcelo.cli_schedules  # noqa: E402
import parcelo.cli_scheduling  # noqa: E402, F401


def main(argv: list[str] | None = None) -> NoReturn:
    """Console-script entry point of ``parcelo``."""
    cli.main(args=argv, prog_name="parcelo")
    raise SystemExit(0)  # unreachable: click exits itself in standalone mode


if __name__ == "__main__":
    main()

"""``parcelo job update`` and ``parcelo queue ...``: steering what runs, and how fast.

Registered on the ``parcelo`` command group by :mod:`parcelo.cli` (which it builds on).
"""

from __future__ import annotations

import click
from rich.table import Table

from parcelo.cli import _Obj, _print_status, cli, echo_json, job, pass_obj, to_dict
from parcelo.v1 import queues_pb2

_LIMITS = (
    click.option(
        "--max-concurrency", type=click.IntRange(0, 2**32 - 1), help="Leaf leases held at once (0: no limit)."
    ),
    click.option(
        "--max-leases-per-second",
        type=click.FloatRange(min=0),
        help="Leases granted per second (0: no limit).",
    ),
    click.option("--burst", type=click.IntRange(0, 2**32 - 1), help="The rate limit's burst (0: the rate)."),
)


def _limits(command: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_LIMITS):
        command = option(command)
    return command


@job.command("update")
@click.argument("job_id")
@click.option("--priority", type=click.IntRange(-(2**31), 2**31 - 1), help="Higher runs first in a queue.")
@click.option("--weight", type=click.IntRange(1, 2**32 - 1), help="Share of the job's fairness key.")
@_limits
@pass_obj
def update(
    obj: _Obj,
    job_id: str,
    priority: int | None,
    weight: int | None,
    max_concurrency: int | None,
    max_leases_per_second: float | None,
    burst: int | None,
) -> None:
    """Change a job's priority, weight or limits while it runs (options left out stay)."""
    with obj.client() as client:
        changed = client.update_job(
            job_id,
            priority=priority,
            weight=weight,
            max_concurrency=max_concurrency,
            max_leases_per_second=max_leases_per_second,
            burst=burst,
        )
    _print_status(changed)


@cli.group()
def queue() -> None:
    """Queues: depth, limits over all their jobs, pause."""


def _limit(value: float) -> str:
    return f"{value:g}" if value else "-"


def _table(queues: list[queues_pb2.Queue]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("QUEUE", "JOBS", "PENDING LEAVES", "RUNNING", "MAX CONCURRENCY", "MAX LEASES/S", "PAUSED"):
        table.add_column(name, justify="left" if name in ("QUEUE", "PAUSED") else "right")
    for q in queues:
        table.add_row(
            q.name,
            str(q.jobs),
            f"{q.pending_leaves:,}",
            f"{q.running_leases:,}",
            _limit(q.max_concurrency),
            _limit(q.max_leases_per_second),
            "yes" if q.paused else "",
        )
    return table


@queue.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of Queue messages.")
@pass_obj
def list_queues(obj: _Obj, as_json: bool) -> None:
    """Every queue a job, a setting or a connected worker names."""
    with obj.client() as client:
        queues = client.list_queues()
    if as_json:
        echo_json([to_dict(q) for q in queues])
    elif queues:
        obj.console.print(_table(queues))
    else:
        click.echo("no queues", err=True)


@queue.command("get")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the Queue message as JSON.")
@pass_obj
def get_queue(obj: _Obj, name: str, as_json: bool) -> None:
    """One queue's depth, limits and paused flag."""
    with obj.client() as client:
        found = client.get_queue(name)
    if as_json:
        echo_json(to_dict(found))
    else:
        obj.console.print(_table([found]))


@queue.command("update")
@click.argument("name")
@_limits
@pass_obj
def update_queue(
    obj: _Obj, name: str, max_concurrency: int | None, max_leases_per_second: float | None, burst: int | None
) -> None:
    """Change the limits that bound the sum over a queue's jobs (options left out stay)."""
    with obj.client() as client:
        changed = client.update_queue(
            name, max_concurrency=max_concurrency, max_leases_per_second=max_leases_per_second, burst=burst
        )
    obj.console.print(_table([changed]))


@queue.command("pause")
@click.argument("name")
@pass_obj
def pause_queue(obj: _Obj, name: str) -> None:
    """No lease from any job of the queue until `queue resume` (running leases go on)."""
    with obj.client() as client:
        click.echo(f"queue {client.pause_queue(name).name} paused")


@queue.command("resume")
@click.argument("name")
@pass_obj
def resume_queue(obj: _Obj, name: str) -> None:
    """Lease from the queue's jobs again."""
    with obj.client() as client:
        click.echo(f"queue {client.resume_queue(name).name} resumed")

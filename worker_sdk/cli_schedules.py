"""``parcelo schedule ...``: recurring jobs, fired from a template on a cron expression or an interval.

Registered on the ``parcelo`` command group by :mod:`parcelo.cli` (which it builds on).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click
from rich.table import Table

from parcelo import defaults
from parcelo.cli import (
    BadInput,
    _Obj,
    cli,
    create,
    echo_json,
    flag_message,
    job_options,
    option_flags,
    pass_obj,
    to_dict,
)
from parcelo.cli_options import parse_duration
from parcelo.client import OVERLAPS
from parcelo.errors import ConfigError
from parcelo.progress import format_time
from parcelo.v1 import schedules_pb2

# Set by each tick, so not part of a schedule's template.
_NOT_TEMPLATE = {"job_id", "request_id", "as_json"}


def _every(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as err:
        raise BadInput(f"--every: {err}") from None


@cli.group()
def schedule() -> None:
    """Schedules: jobs created from a template on a cron expression or every interval."""


def _overlap_name(value: schedules_pb2.Overlap.ValueType) -> str:
    return next((name for name, v in OVERLAPS.items() if v == value), "skip")


def _table(schedules: list[schedules_pb2.Schedule]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in (
        "SCHEDULE",
        "WHEN",
        "TIMEZONE",
        "OVERLAP",
        "CATCH-UP",
        "PAUSED",
        "LAST TICK",
        "NEXT TICK",
        "LAST JOB",
    ):
        table.add_column(name, justify="right" if name == "CATCH-UP" else "left")
    for s in schedules:
        when = s.cron or f"every {s.every.ToTimedelta()}"
        table.add_row(
            s.id,
            when,
            s.timezone or "UTC",
            _overlap_name(s.overlap),
            str(s.catch_up if s.HasField("catch_up") else defaults.SCHEDULE_CATCH_UP),
            "yes" if s.paused else "",
            format_time(s.last_fired_at, short=True),
            format_time(s.next_fire_at, short=True),
            s.last_job_id or "-",
        )
    return table


@schedule.command("create")
@click.argument("schedule_id", metavar="ID")
@click.option("--cron", help="A 5-field cron expression or an alias (@hourly, @daily, ...).")
@click.option(
    "--every",
    callback=_every,
    metavar="DURATION",
    help="An interval (2s, 15m, 1h): ticks at creation + k * every.",
)
@click.option("--timezone", help="IANA time zone the cron expression is read in [default: UTC].")
@click.option(
    "--overlap",
    type=click.Choice(list(OVERLAPS)),
    help="While a job of the schedule is unfinished [default: skip].",
)
@click.option(
    "--catch-up", type=click.IntRange(0, 2**32 - 1), help="Missed ticks fired after downtime [default: 1]."
)
@click.option("--json", "as_json", is_flag=True, help="Print the Schedule message as JSON.")
@pass_obj
def create_schedule(
    obj: _Obj,
    /,
    schedule_id: str,
    cron: str | None,
    every: timedelta | None,
    timezone: str | None,
    overlap: str | None,
    catch_up: int | None,
    as_json: bool,
    **values: Any,
) -> None:
    """Create a schedule firing the job the `job create` options describe; print its id."""
    if (cron is None) == (every is None):
        raise BadInput("give exactly one of --cron and --every")
    try:
        template = job_options(values)
    except ConfigError as err:
        raise BadInput(flag_message(err, option_flags(create_schedule))) from err
    with obj.client() as client:
        created = client.create_schedule(
            schedule_id,
            template,
            cron=cron,
            every=every,
            timezone=timezone,
            overlap=overlap,
            catch_up=catch_up,
        )
    if as_json:
        echo_json(to_dict(created))
    else:
        click.echo(created.id)


# Every `job create` option but the ids a tick sets: spelled once, there.
create_schedule.params.extend(p for p in create.params if p.name not in _NOT_TEMPLATE)


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of Schedule messages.")
@pass_obj
def list_schedules(obj: _Obj, as_json: bool) -> None:
    """Every schedule, with its last and next tick."""
    with obj.client() as client:
        schedules = client.list_schedules()
    if as_json:
        echo_json([to_dict(s) for s in schedules])
    elif schedules:
        obj.console.print(_table(schedules))
    else:
        click.echo("no schedules", err=True)


@schedule.command("get")
@click.argument("schedule_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the Schedule message as JSON.")
@pass_obj
def get_schedule(obj: _Obj, schedule_id: str, as_json: bool) -> None:
    """One schedule: its timing, policies, last and next tick."""
    with obj.client() as client:
        found = client.get_schedule(schedule_id)
    if as_json:
        echo_json(to_dict(found))
    else:
        obj.console.print(_table([found]))


@schedule.command("pause")
@click.argument("schedule_id", metavar="ID")
@pass_obj
def pause_schedule(obj: _Obj, schedule_id: str) -> None:
    """No tick fires until `schedule resume` (jobs already created go on)."""
    with obj.client() as client:
        click.echo(f"schedule {client.pause_schedule(schedule_id).id} paused")


@schedule.command("resume")
@click.argument("schedule_id", metavar="ID")
@pass_obj
def resume_schedule(obj: _Obj, schedule_id: str) -> None:
    """Fire ticks again, from now on."""
    with obj.client() as client:
        click.echo(f"schedule {client.resume_schedule(schedule_id).id} resumed")


@schedule.command("trigger")
@click.argument("schedule_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the created job as JSON instead of its id.")
@pass_obj
def trigger_schedule(obj: _Obj, schedule_id: str, as_json: bool) -> None:
    """Fire a tick now, whatever the overlap policy says; print the job's id."""
    with obj.client() as client:
        fired = client.trigger_schedule(schedule_id)
    if as_json:
        echo_json(to_dict(fired))
    else:
        click.echo(fired.id)


@schedule.command("delete")
@click.argument("schedule_id", metavar="ID")
@pass_obj
def delete_schedule(obj: _Obj, schedule_id: str) -> None:
    """Remove a schedule; the jobs it created stay."""
    with obj.client() as client:
        client.delete_schedule(schedule_id)
    click.echo(f"schedule {schedule_id} deleted")

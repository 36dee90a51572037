"""``parcelo-worker``: run a handler on leases from a coordinator."""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from pathlib import Path

import click

from parcelo import defaults
from parcelo.cli_options import (
    log_options,
    setup_logging,
    target_option,
    tls_from_flags,
    tls_options,
    token_option,
)
from parcelo.errors import ConfigError
from parcelo.handlers import load, module_should_process
from parcelo.tracing import TracingError, configure_from_env
from parcelo.worker import Worker


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@target_option
@tls_options
@token_option
@click.option("--handler", "handler_spec", required=True, help="The handler, as module:function.")
@click.option(
    "--should-process",
    "should_spec",
    default=None,
    help="Pruning callback module:function [default: the handler module's should_process, if any].",
)
@click.option(
    "--queue", "queues", multiple=True, help="Queue to take leases from (repeatable) [default: default]."
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=defaults.WORKER_CONCURRENCY,
    show_default=True,
    help="Handlers running at once.",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    default=None,
    help="Leases kept in hand beyond the running ones [default: about "
    f"{defaults.PREFETCH_TIME.total_seconds():g} s of work, from the leaves' observed durations, "
    f"at most {defaults.WORKER_PREFETCH_MAX}].",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=defaults.DRAIN_TIMEOUT.total_seconds(),
    show_default=True,
    metavar="SECONDS",
    help="On SIGTERM, how long running handlers get to finish.",
)
@click.option("--worker-id", default=None, help="Name shown to the coordinator [default: host:pid].")
@log_options()
def main(
    target: str,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    token: str | None,
    handler_spec: str,
    should_spec: str | None,
    queues: tuple[str, ...],
    concurrency: int,
    prefetch: int | None,
    drain_timeout: float,
    worker_id: str | None,
    log_level: str,
    log_format: str,
) -> None:
    """Pull leases from the coordinator at TARGET and run HANDLER on them until SIGTERM.

    Handler runs are traced when OTEL_TRACES_EXPORTER names an exporter (docs/operations.md).
    """
    setup_logging(log_level, log_format)
    tls = tls_from_flags(tls_ca, tls_cert, tls_key)
    try:
        configure_from_env("parcelo-worker")
    except TracingError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    try:
        handler = load(handler_spec)
        should = load(should_spec) if should_spec else module_should_process(handler_spec)
        worker = Worker(
            target,
            handler,
            queues=queues or (defaults.DEFAULT_QUEUE,),
            concurrency=concurrency,
            prefetch=prefetch,
            should_process=should,
            worker_id=worker_id,
            drain_timeout=timedelta(seconds=drain_timeout),
            tls=tls,
            token=token,
        )
    except ConfigError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    worker.run_sync()
    s = worker.stats
    logging.getLogger(__name__).info(
        "stopped: %d completed, %d skipped, %d failed, %d released, %d rejected",
        s.completed,
        s.skipped,
        s.failed,
        s.released,
        s.rejected,
    )

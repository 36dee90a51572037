"""Command-line options shared by ``parcelo``, ``parcelo-worker`` and ``parcelo-coordinator``."""

from __future__ import annotations

import logging

import click

from parcelo import defaults

target_option = click.option(
    "--target",
    envvar="PARCELO_TARGET",
    default=defaults.DEFAULT_TARGET,
    show_default=True,
    help="Coordinator address host:port (env PARCELO_TARGET).",
)

log_level_option = click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)


def setup_logging(level: str) -> None:
    """Log lines with time, level and logger name to stderr, from ``level`` up."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

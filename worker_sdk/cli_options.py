"""Command-line options shared by ``parcelo``, ``parcelo-worker`` and ``parcelo-coordinator``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from parcelo import defaults
from parcelo.channel import TLS, tls_of
from parcelo.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

target_option = click.option(
    "--target",
    envvar="PARCELO_TARGET",
    default=defaults.DEFAULT_TARGET,
    show_default=True,
    help="Coordinator address host:port (env PARCELO_TARGET).",
)

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def tls_options(command: F) -> F:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key`` (env ``PARCELO_TLS_*``): TLS to the coordinator.

    The command receives ``tls_ca``, ``tls_cert`` and ``tls_key``; :func:`tls_from_flags` makes
    them one :class:`parcelo.channel.TLS`.
    """
    command = click.option(
        "--tls-key",
        envvar="PARCELO_TLS_KEY",
        type=_FILE,
        help="Unencrypted PEM private key of --tls-cert (env PARCELO_TLS_KEY).",
    )(command)
    command = click.option(
        "--tls-cert",
        envvar="PARCELO_TLS_CERT",
        type=_FILE,
        help="PEM client certificate, for a coordinator that requires one (env PARCELO_TLS_CERT).",
    )(command)
    return click.option(
        "--tls-ca",
        envvar="PARCELO_TLS_CA",
        type=_FILE,
        help="Connect over TLS, verifying the coordinator with these PEM CA certificates (env PARCELO_TLS_CA).",
    )(command)


def tls_from_flags(tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None) -> TLS | None:
    """The :class:`TLS` the ``--tls-*`` flags ask for (``None``: plaintext); a usage error if they
    do not fit together."""
    try:
        return tls_of(tls_ca, tls_cert, tls_key)
    except ConfigError as err:
        raise click.UsageError("--tls-cert and --tls-key go together") from err


token_option = click.option(
    "--token",
    envvar="PARCELO_TOKEN",
    default=None,
    help="Bearer token for a coordinator started with --auth-tokens (env PARCELO_TOKEN; prefer the "
    "variable: command lines are visible to other users).",
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

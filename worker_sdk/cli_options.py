"""Command-line options shared by ``parcelo``, ``parcelo-worker`` and ``parcelo-coordinator``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from parcelo import defaults
from parcelo.channel import TLS, tls_of
from parcelo.errors import ConfigError
from parcelo.logs import FORMATS
from parcelo.logs import setup_logging as setup_logging  # the CLIs' one import

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


def log_options(default_level: str = "INFO") -> Callable[[F], F]:
    """``--log-level`` and ``--log-format text|json`` (env ``PARCELO_LOG_FORMAT``); the command
    receives ``log_level`` and ``log_format`` for :func:`setup_logging`."""

    def add(command: F) -> F:
        command = click.option(
            "--log-format",
            type=click.Choice(FORMATS),
            default="text",
            show_default=True,
            envvar="PARCELO_LOG_FORMAT",
            help="Log lines as text, or as JSON objects with job_id, fence and worker_id as fields.",
        )(command)
        return click.option(
            "--log-level",
            default=default_level,
            show_default=True,
            type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
        )(command)

    return add

"""Command-line options shared by ``parcelo``, ``parcelo-worker`` and ``parcelo-coordinator``."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
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


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``1h30m``, ``500ms``, ``1d`` (or plain seconds: ``90``) as a timedelta.

    Raises:
        ValueError: not a duration, or not more than zero.
    """
    body = text.strip()
    try:
        seconds = float(body)
    except ValueError:
        parts = _DURATION.findall(body)
        if not parts or "".join(n + unit for n, unit in parts) != body:
            raise ValueError(f"{text!r} is not a duration like 90s, 15m, 2h or 1h30m") from None
        seconds = sum(float(n) * _UNITS[unit] for n, unit in parts)
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{text!r} must be more than zero")
    return timedelta(seconds=seconds)

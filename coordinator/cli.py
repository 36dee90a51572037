"""``parcelo-coordinator``: run the coordinator daemon."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from parcelo import defaults
from parcelo.cli_options import log_options, setup_logging
from parcelo.coordinator.limits import DEFAULT_LIMITS, Limits

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    envvar="PARCELO_DATA_DIR",
    help="Directory of the embedded RocksDB (created if missing).",
)
@click.option(
    "--listen",
    default=defaults.DEFAULT_LISTEN,
    show_default=True,
    envvar="PARCELO_LISTEN",
    help="HOST:PORT to serve gRPC on (port 0 picks a free one). Other than loopback only with "
    "--auth-tokens or --tls-client-ca, or --insecure-listen-anywhere.",
)
@click.option(
    "--tls-cert",
    type=_FILE,
    default=None,
    help="Serve TLS with this PEM certificate chain (with --tls-key).",
)
@click.option("--tls-key", type=_FILE, default=None, help="The unencrypted PEM private key of --tls-cert.")
@click.option(
    "--tls-client-ca",
    type=_FILE,
    default=None,
    help="Mutual TLS: require client certificates issued by these PEM CA certificates.",
)
@click.option(
    "--auth-tokens",
    type=_FILE,
    default=None,
    help="Require a bearer token with a role on every call but health checks: a file of ROLE TOKEN "
    "lines (docs/security.md). SIGHUP reloads it and the certificates.",
)
@click.option(
    "--insecure-listen-anywhere",
    is_flag=True,
    help="Allow a --listen address other than loopback without tokens or client certificates.",
)
@click.option(
    "--http-listen",
    default=defaults.DEFAULT_HTTP_LISTEN,
    show_default=True,
    envvar="PARCELO_HTTP_LISTEN",
    help="HOST:PORT of the HTTP port: dashboard at /, JSON API at /api/v1, /metrics, /healthz, "
    "/readyz (port 0: any free one; off: none). Same TLS, tokens and loopback rule as --listen.",
)
@click.option(
    "--public-metrics",
    is_flag=True,
    help="Serve /metrics without a token even with --auth-tokens (for a Prometheus that cannot "
    "send one, e.g. discovering pods by annotation): counters and gauges, queue names and job ids.",
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    hidden=True,
    envvar="PARCELO_METRICS_PORT",
    help="Gone: metrics are served at /metrics of --http-listen.",
)
@click.option(
    "--heartbeat-interval-ms",
    type=int,
    default=0,
    show_default=True,
    help="Heartbeat interval suggested to workers (0: a third of each lease's TTL).",
)
@click.option(
    "--event-retention",
    type=int,
    default=defaults.EVENT_RETENTION,
    show_default=True,
    help="Events kept per job.",
)
@click.option(
    "--grace",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds in-flight calls get to finish on SIGTERM.",
)
@click.option(
    "--max-message-bytes",
    type=click.IntRange(min=64 << 10),
    default=DEFAULT_LIMITS.message_bytes,
    show_default=True,
    help="Largest gRPC message received or sent.",
)
@click.option(
    "--max-params-bytes",
    type=click.IntRange(min=2),
    default=DEFAULT_LIMITS.params_bytes,
    show_default=True,
    help="Largest params_json of a job (bytes of UTF-8).",
)
@click.option(
    "--max-leases-per-request",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMITS.leases_per_request,
    show_default=True,
    help="Most leases one Lease asks for, fences one Complete or Fail names, credit one stream holds.",
)
@click.option(
    "--max-streams-per-worker",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMITS.streams_per_worker,
    show_default=True,
    help="Most Work streams open at once under one worker id.",
)
@click.option(
    "--max-result-bytes",
    type=click.IntRange(min=1),
    default=defaults.MAX_RESULT_BYTES,
    show_default=True,
    help="Largest leaf result accepted (bytes of JSON), and largest result a merge may grow to.",
)
@click.option(
    "--backup-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where SIGUSR1 writes online backups [default: DATA_DIR-backups beside the data dir].",
)
@click.option(
    "--backup-to",
    type=click.Path(path_type=Path),
    default=None,
    help="Do not serve: copy the (stopped) coordinator's data dir to this new folder and exit.",
)
@log_options()
def main(
    data_dir: Path,
    listen: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    auth_tokens: Path | None,
    insecure_listen_anywhere: bool,
    http_listen: str,
    public_metrics: bool,
    metrics_port: int | None,
    heartbeat_interval_ms: int,
    event_retention: int,
    grace: float,
    backup_dir: Path | None,
    backup_to: Path | None,
    max_message_bytes: int,
    max_params_bytes: int,
    max_leases_per_request: int,
    max_streams_per_worker: int,
    max_result_bytes: int,
    log_level: str,
    log_format: str,
) -> None:
    """Run a Parcelo coordinator: jobs and leases in RocksDB under DATA_DIR, gRPC on LISTEN.

    RPCs are traced when OTEL_TRACES_EXPORTER names an exporter (docs/operations.md).
    """
    setup_logging(log_level, log_format)
    if metrics_port is not None:
        raise click.UsageError(
            "--metrics-port (or PARCELO_METRICS_PORT) is gone: metrics are at /metrics of the HTTP "
            f"port, --http-listen (default {defaults.DEFAULT_HTTP_LISTEN}); e.g. --http-listen "
            f"0.0.0.0:{metrics_port} with --auth-tokens (or --public-metrics)"
        )
    try:
        from parcelo.coordinator.server import Config, serve
        from parcelo.coordinator.tls import ServerTLS
    except ImportError as err:
        click.echo(
            f"error: the coordinator needs the 'coordinator' extra (pip install 'parcelo[coordinator]'): {err}",
            err=True,
        )
        sys.exit(2)
    if backup_to is not None:
        _offline_backup(data_dir, backup_to)
        return
    if event_retention < 1:
        raise click.BadParameter("must be at least 1", param_hint="--event-retention")
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_client_ca is not None and tls_cert is None:
        raise click.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    from parcelo.tracing import TracingError, configure_from_env

    try:
        tracer_provider = configure_from_env("parcelo-coordinator")
    except TracingError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    config = Config(
        data_dir=data_dir,
        listen=listen,
        http_listen=None if http_listen.strip().lower() == "off" else http_listen,
        public_metrics=public_metrics,
        tracer_provider=tracer_provider,
        heartbeat_interval_ms=heartbeat_interval_ms,
        event_retention=event_retention,
        grace=grace,
        backup_dir=backup_dir,
        max_result_bytes=max_result_bytes,
        limits=Limits(max_message_bytes, max_params_bytes, max_leases_per_request, max_streams_per_worker),
        tls=ServerTLS(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None,
        auth_tokens=auth_tokens,
        insecure_listen_anywhere=insecure_listen_anywhere,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from parcelo.coordinator.errors import StartupError
    from parcelo.coordinator.store import StoreFormatError, StoreInUseError

    try:
        asyncio.run(serve(config))
    except (OSError, StoreFormatError, StoreInUseError, StartupError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)


def _offline_backup(data_dir: Path, dest: Path) -> None:
    from parcelo.coordinator.store import Store, StoreInUseError

    if not (data_dir / "CURRENT").exists():
        click.echo(f"error: {data_dir} is not a Parcelo data dir", err=True)
        sys.exit(1)
    if dest.exists():
        click.echo(f"error: {dest} exists; give a new folder", err=True)
        sys.exit(1)
    try:
        store = Store(data_dir)
    except StoreInUseError:
        click.echo(
            f"error: data dir {data_dir} is in use by a running coordinator: take an online backup "
            "instead (parcelo admin backup --to DIR, or SIGUSR1)",
            err=True,
        )
        sys.exit(1)
    except Exception as err:
        click.echo(f"error: cannot open {data_dir} ({err})", err=True)
        sys.exit(1)
    try:
        store.backup(dest)
    except Exception as err:
        click.echo(f"error: cannot write a backup to {dest}: {err}", err=True)
        sys.exit(1)
    finally:
        store.close()
    click.echo(f"backup written to {dest}")

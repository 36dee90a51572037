"""How a client reaches a coordinator: TLS credentials and the bearer token, built in one place.

:class:`parcelo.client.Client`, :class:`parcelo.Worker`, the CLIs and :mod:`parcelo.testing`
open their channels with :func:`open_channel` / :func:`open_aio_channel` and send
:func:`token_metadata` with their calls. The token travels as call metadata rather than as gRPC
call credentials because gRPC refuses call credentials on a plaintext channel, and a coordinator
may take tokens without TLS (on a trusted network).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from parcelo.errors import ConfigError

Metadata = tuple[tuple[str, str], ...]
ChannelOptions = Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class TLS:
    """TLS to the coordinator, and for mutual TLS the client's own certificate.

    Attributes:
        ca: PEM CA certificates to verify the coordinator with (``--tls-ca``); ``None``: the
            system's roots, as gRPC finds them.
        cert: PEM client certificate chain (``--tls-cert``), for a coordinator that requires one.
        key: Its unencrypted PEM private key (``--tls-key``).

    Raises:
        ConfigError: Only one of ``cert`` and ``key`` is given.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("tls: a client certificate needs its key and a key its certificate")

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials from the files, read now.

        Raises:
            ConfigError: A file cannot be read.
        """
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.key),
            certificate_chain=_read(self.cert),
        )


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(f"tls: cannot read {path}: {err.strerror or err}") from None


def tls_of(ca: Path | None, cert: Path | None, key: Path | None) -> TLS | None:
    """A :class:`TLS` when any of the files is given (the CLIs' ``--tls-*`` flags), else ``None``."""
    return None if ca is None and cert is None and key is None else TLS(ca, cert, key)


def token_metadata(token: str | None) -> Metadata:
    """The metadata that carries ``token`` (``authorization: Bearer TOKEN``); empty for no token.

    Raises:
        ConfigError: The token is empty or not printable ASCII without spaces (gRPC metadata
            could not carry it). The message does not quote it.
    """
    if token is None:
        return ()
    if not token or not all("!" <= c <= "~" for c in token):
        raise ConfigError("token: must be printable ASCII without spaces (the token is not shown)")
    return (("authorization", f"Bearer {token}"),)


def open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: ChannelOptions = ()
) -> grpc.Channel:
    """A synchronous channel to ``target``: TLS with ``credentials``, plaintext without."""
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def open_aio_channel(
    target: str, credentials: grpc.ChannelCredentials | None, options: ChannelOptions = ()
) -> aio.Channel:
    """A grpc.aio channel to ``target``: TLS with ``credentials``, plaintext without."""
    if credentials is None:
        return aio.insecure_channel(target, options=options)
    return aio.secure_channel(target, credentials, options=options)

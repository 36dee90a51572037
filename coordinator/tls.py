"""TLS of the coordinator's port: server credentials from PEM files, replaceable while serving.

The files are checked with the standard library's ``ssl`` before gRPC sees them, so a key that
does not match its certificate is one line at start (or on SIGHUP, which keeps the certificates
in use) rather than handshakes failing later. New certificates apply to new connections; open
connections and their streams keep the ones they were made with.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from parcelo.coordinator.errors import StartupError


@dataclass(frozen=True)
class ServerTLS:
    """The coordinator's certificate chain and key, and for mutual TLS the CA of its clients.

    Attributes:
        cert: PEM certificate chain, the server's certificate first (``--tls-cert``).
        key: Its PEM private key, unencrypted (``--tls-key``).
        client_ca: PEM CA certificates; when set, every client must present a certificate
            issued by one of them (``--tls-client-ca``).
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate."""
        return self.client_ca is not None


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise StartupError(f"cannot read {flag} {path}: {err.strerror or err}") from None


class _EncryptedKey(Exception):
    """The private key asks for a password, which gRPC has no way to take."""


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's password.
    raise _EncryptedKey


def certificate_configuration(tls: ServerTLS) -> grpc.ServerCertificateConfiguration:
    """Read and check the PEM files of ``tls``.

    Raises:
        StartupError: A file cannot be read, is not PEM, or the key does not match the certificate.
    """
    cert = _read(tls.cert, "--tls-cert")
    key = _read(tls.key, "--tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert, tls.key, password=_no_password)
    except _EncryptedKey:
        raise StartupError(f"--tls-key {tls.key} is encrypted; gRPC needs an unencrypted key") from None
    except (ssl.SSLError, OSError) as err:
        raise StartupError(
            f"--tls-cert {tls.cert} and --tls-key {tls.key} are not a PEM certificate chain and "
            f"its unencrypted private key ({getattr(err, 'reason', None) or err})"
        ) from None
    client_ca = None
    if tls.client_ca is not None:
        client_ca = _read(tls.client_ca, "--tls-client-ca")
        try:
            context.load_verify_locations(cadata=client_ca.decode("ascii"))
        except (ssl.SSLError, ValueError) as err:
            raise StartupError(
                f"--tls-client-ca {tls.client_ca} holds no PEM CA certificate ({err})"
            ) from None
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


def load_ssl_context(context: ssl.SSLContext, tls: ServerTLS) -> None:
    """Load the certificate chain (and client CAs) of ``tls`` into ``context``: the HTTP port's
    TLS, from the same files as gRPC's. Loading again (SIGHUP) gives new connections the new
    certificate; a client CA added stays trusted until a restart (an SSL context cannot forget one).

    Raises:
        StartupError: The files are unusable (checked first by :func:`certificate_configuration`).
    """
    certificate_configuration(tls)
    context.load_cert_chain(tls.cert, tls.key, password=_no_password)
    if tls.client_ca is not None:
        context.load_verify_locations(cafile=tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED


def server_ssl_context(tls: ServerTLS) -> ssl.SSLContext:
    """A server SSL context over the files of ``tls`` (see :func:`load_ssl_context`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_ssl_context(context, tls)
    return context


class ReloadableCredentials:
    """gRPC server credentials over :class:`ServerTLS` whose files can be read again while serving.

    gRPC asks :meth:`_fetch` at each TLS handshake whether the configuration changed; it gets the
    one :meth:`reload` read, once, and ``None`` (no change) otherwise.

    Raises:
        StartupError: The files are unusable (see :func:`certificate_configuration`).
    """

    def __init__(self, tls: ServerTLS) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._next: grpc.ServerCertificateConfiguration | None = None
        self.credentials: grpc.ServerCredentials = grpc.dynamic_ssl_server_credentials(
            certificate_configuration(tls), self._fetch, require_client_authentication=tls.mutual
        )

    def reload(self) -> None:
        """Read the files again; new connections get them.

        Raises:
            StartupError: They are unusable; the certificates in use stay.
        """
        config = certificate_configuration(self.tls)
        with self._lock:
            self._next = config

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called on gRPC's own threads, hence the lock: a reload must not be lost between the
        # read and the reset of _next.
        with self._lock:
            config, self._next = self._next, None
        return config

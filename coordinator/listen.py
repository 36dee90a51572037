"""Whether a listen address is reachable from other hosts, and the start-up rule that follows.

A coordinator without tokens or client certificates lets anyone who reaches its port create,
cancel and delete jobs and report results for any lease, so unless it authenticates its callers
it serves on loopback only; ``--insecure-listen-anywhere`` is the explicit way out. Pure functions
of the address: no socket is opened and no name is resolved.
"""

from __future__ import annotations

import ipaddress

from parcelo.coordinator.errors import StartupError

LOCAL_SCHEMES = ("unix:", "unix-abstract:")
"""gRPC addresses of Unix sockets: reachable from this host only, like loopback."""

LOOPBACK_NAMES = frozenset({"localhost"})
"""Host names that mean loopback without a lookup (RFC 6761 reserves ``localhost`` for it)."""


def host_of(address: str) -> str:
    """The host part of a ``HOST:PORT`` listen address.

    ``[::1]:50051`` -> ``::1``, ``0.0.0.0:0`` -> ``0.0.0.0``, ``localhost:1`` -> ``localhost``.
    """
    if address.startswith("["):
        return address[1:].partition("]")[0]
    host, sep, _ = address.rpartition(":")
    return host if sep else address


def is_loopback(address: str) -> bool:
    """Whether a gRPC listen address is reachable from this host only.

    Loopback IPs (``127.0.0.0/8``, ``::1``, IPv4-mapped loopback), ``localhost`` and Unix sockets
    are; the unspecified addresses (``0.0.0.0``, ``::``), every other IP and every other host name
    are not: a name may resolve to any interface, and it is not looked up here.
    """
    if address.startswith(LOCAL_SCHEMES):
        return True
    host = host_of(address)
    if host.lower().rstrip(".") in LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # Python 3.11's is_loopback is False for ::ffff:127.0.0.1, which is loopback all the same.
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def exposed(address: str, *, authenticated: bool, allow: bool, flag: str = "") -> bool:
    """Whether serving on ``address`` lets other hosts call without authentication.

    Args:
        address: The listen address.
        authenticated: Callers must present a token or a client certificate.
        allow: ``--insecure-listen-anywhere`` was given.
        flag: The flag the address came from, named in the error (``--http-listen``); none for
            ``--listen``.

    Returns:
        True when the address is exposed and ``allow`` permits it (the caller logs a warning).

    Raises:
        StartupError: The address is exposed and ``allow`` is false.
    """
    if authenticated or is_loopback(address):
        return False
    if not allow:
        raise StartupError(
            f"refusing to listen on {address}{f' ({flag})' if flag else ''} without --auth-tokens or --tls-client-ca: anyone who "
            "reaches it could run, cancel and delete every job; listen on loopback, secure the port "
            "(docs/security.md), or pass --insecure-listen-anywhere"
        )
    return True

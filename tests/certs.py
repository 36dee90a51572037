"""Certificates for the TLS tests: a CA, two server certificates and a client certificate, as PEM
files (``cryptography``; P-256 keys, which take microseconds to make).

The server certificates name ``127.0.0.1`` and ``localhost``, the addresses tests connect to.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_NAMES: list[x509.GeneralName] = [
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
]


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path
    common_name: str


@dataclass(frozen=True)
class Pki:
    """A CA and what it issued."""

    ca: Path
    server: Pair
    rotated: Pair
    """Another server certificate of the same CA (the one a reload switches to)."""
    client: Pair


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(common_name), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(x509.SubjectAlternativeName(LOCAL_NAMES), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key", name)
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pair


def make_pki(directory: Path) -> Pki:
    """Write a CA (``ca.crt``) and the certificates it issues into ``directory``."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("parcelo-test-ca", ca_key, None)
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pairs = {}
    for name, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("rotated", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        pairs[name] = _write(directory, name, _certificate(name, key, (ca.subject, ca_key), usage=usage), key)
    return Pki(directory / "ca.crt", pairs["server"], pairs["rotated"], pairs["client"])

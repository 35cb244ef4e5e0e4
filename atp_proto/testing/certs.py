"""Self-signed certificates for tests and benchmarks that need TLS (wss://, QUIC), made
with ``cryptography`` as an operator's own tooling would.

``atp_proto.transports.tls.generate_dev_cert`` makes the users' dev certificate; tests make
their own here so that they do not depend on it: :func:`make_cert` for loopback routers,
:func:`self_signed` for names of the test's choosing (an unknown CA, a wrong host name, an
expired certificate).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["CertFiles", "make_cert", "self_signed"]


@dataclass(frozen=True)
class CertFiles:
    cert: str
    key: str


def _issue(
    directory: Path,
    files: tuple[str, str],
    common_name: str,
    san: list[x509.GeneralName],
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    *,
    ca: bool,
) -> tuple[Path, Path]:
    """Sign a P-256 certificate for ``san`` with its own key; write it and the key (PEM,
    PKCS#8) to the two ``files`` in ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    cert = builder.sign(key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / files[0], directory / files[1]
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def make_cert(directory: Path, name: str = "localhost") -> CertFiles:
    """A P-256 certificate for ``name``, 127.0.0.1 and ::1, valid for two days."""
    now = datetime.datetime.now(datetime.UTC)
    san: list[x509.GeneralName] = [
        x509.DNSName(name),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert, key = _issue(
        directory,
        (f"{name}.crt", f"{name}.key"),
        name,
        san,
        now - datetime.timedelta(hours=1),
        now + datetime.timedelta(days=2),
        ca=True,
    )
    return CertFiles(str(cert), str(key))


def self_signed(directory: Path, dns_names: list[str], *, days: float = 1) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for ``dns_names`` only (no IP address: a client
    that dials 127.0.0.1 must refuse it by name), valid for ``days`` from now (negative:
    already expired). Returns the cert and key files."""
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=days)
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    return _issue(
        directory,
        ("cert.pem", "key.pem"),
        dns_names[0],
        san,
        min(now, not_after) - datetime.timedelta(days=2),
        not_after,
        ca=False,
    )

"""TLS for the router's listeners and the client: certificates, contexts, the dev cert.

One :class:`TLSConfig` describes the TLS of both ends and of both transports: the router
serves ``wss://`` (:mod:`.ws_server` over :class:`~._tls_stream.TlsStream`) and QUIC with
the same certificate and key; a client verifies the router's certificate by default,
against the system's trust store or ``ca_file``. ``insecure`` turns verification off for
local use, with an :class:`InsecureTLSWarning` (as urllib3 does, so that a program can
filter it and a person still sees it).

* Server: TLS 1.2 or newer, no renegotiation, ALPN ``http/1.1`` for ``wss://`` (RFC 6455
  runs over HTTP/1.1); QUIC negotiates :data:`ALPN_QUIC` instead (ATP-QUIC-001).
* Client: hostname checked and chain verified unless ``insecure`` (ATP-WS-013).
* Dev cert (``atp serve --dev-cert``): :func:`generate_dev_cert` makes a self-signed
  ECDSA P-256 certificate for ``localhost``, ``127.0.0.1`` and ``::1`` under
  :func:`dev_cert_dir` (the user's data directory, 0700; the key 0600) and reuses it while
  it is valid, so a client given ``--ca <that cert>`` keeps working across restarts.

A certificate or key that cannot be used raises :class:`TLSConfigError` with one sentence
naming the file (``atp serve`` turns it into a one-line error, exit 2).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import ipaddress
import os
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

__all__ = [
    "ALPN_QUIC",
    "ALPN_WSS",
    "DEV_CERT_NAME",
    "DEV_KEY_NAME",
    "InsecureTLSWarning",
    "TLSConfig",
    "TLSConfigError",
    "dev_cert_dir",
    "fingerprint",
    "generate_dev_cert",
    "make_or_reuse_dev_cert",
]

#: ALPN of the QUIC binding (ATP-QUIC-001)
ALPN_QUIC = "atp/1"
#: ALPN of ``wss://``: WebSocket runs over HTTP/1.1 (RFC 6455 §1.7)
ALPN_WSS = "http/1.1"

DEV_CERT_NAME = "dev-cert.pem"
DEV_KEY_NAME = "dev-key.pem"
#: how long a new dev cert is valid, and how much validity a reused one must have left
DEV_CERT_DAYS = 365
DEV_CERT_MIN_LEFT = dt.timedelta(days=7)


class TLSConfigError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the file."""


class InsecureTLSWarning(UserWarning):
    """A client context was made with ``insecure=True``: the peer is not verified."""


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings of a listener (``cert_file`` + ``key_file``) or a client (``ca_file``,
    ``insecure``). ``key_file`` may be None when the key is inside ``cert_file``."""

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    insecure: bool = False

    #: the QUIC binding's ALPN (ATP-QUIC-001), for a QUIC configuration made from this
    quic_alpn: ClassVar[str] = ALPN_QUIC

    def server_ssl_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        """A server context with the certificate loaded: TLS 1.2+, no renegotiation,
        ALPN ``alpn`` (default ``["http/1.1"]`` for ``wss://``).

        Raises:
            TLSConfigError: no certificate configured, a file missing or unreadable, not
                PEM, or a key that does not match the certificate.
        """
        if not self.cert_file:
            raise TLSConfigError("TLS needs a certificate: give --cert FILE and --key FILE")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_RENEGOTIATION
        _load_chain(ctx, self.cert_file, self.key_file)
        ctx.set_alpn_protocols(list(alpn) if alpn is not None else [ALPN_WSS])
        return ctx

    def client_ssl_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        """A client context: verifies the peer's chain and hostname against ``ca_file``
        (only that file) or the system's trust store; with ``insecure``, verifies
        nothing and warns (:class:`InsecureTLSWarning`).

        Raises:
            TLSConfigError: ``ca_file`` missing or not a PEM certificate.
        """
        if self.insecure:
            warnings.warn(
                "TLS certificate verification is off (insecure): for local use only",
                InsecureTLSWarning,
                stacklevel=2,
            )
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_file:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks the hostname
            try:
                ctx.load_verify_locations(cafile=self.ca_file)
            except OSError as exc:
                raise TLSConfigError(_file_problem("CA file", self.ca_file, exc)) from None
        else:
            ctx = ssl.create_default_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(list(alpn) if alpn is not None else [ALPN_WSS])
        return ctx


def _load_chain(ctx: ssl.SSLContext, cert_file: str, key_file: str | None) -> None:
    for what, path in (("certificate", cert_file), ("key", key_file)):
        if path is None:
            continue
        if not os.path.isfile(path):
            raise TLSConfigError(f"TLS {what} file {path}: no such file")
        if not os.access(path, os.R_OK):
            raise TLSConfigError(f"TLS {what} file {path}: permission denied")
    asked: list[bool] = []

    def no_password() -> bytes:
        # never OpenSSL's own prompt on the terminal (a service would hang on it)
        asked.append(True)
        return b""

    try:
        ctx.load_cert_chain(cert_file, key_file, password=no_password)
    except ssl.SSLError as exc:
        if asked:
            raise TLSConfigError(
                f"TLS key {key_file or cert_file} is encrypted: give an unencrypted key "
                "(readable by the router's user only)"
            ) from None
        reason = (exc.reason or "").upper()
        if "MISMATCH" in reason:
            raise TLSConfigError(
                f"TLS key {key_file or cert_file} does not match the certificate {cert_file}"
            ) from None
        raise TLSConfigError(
            f"TLS certificate {cert_file} or key {key_file or cert_file} is not a usable "
            f"PEM certificate and private key ({(exc.reason or str(exc)).lower()})"
        ) from None
    except OSError as exc:
        raise TLSConfigError(_file_problem("certificate or key", cert_file, exc)) from None


def _file_problem(what: str, path: str, exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError) or not exc.strerror:
        return f"TLS {what} {path} is not a PEM certificate"
    return f"TLS {what} {path}: {exc.strerror.lower()}"


# ---------------------------------------------------------------------- dev cert


def dev_cert_dir() -> Path:
    """The directory of the dev cert: ``$XDG_DATA_HOME/atp`` or ``~/.local/share/atp``,
    created with mode 0700 (a private key lives there)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    path = Path(base) / "atp"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 fingerprint of a PEM certificate, as ``openssl x509 -fingerprint -sha256``
    prints it (``AB:CD:...``)."""
    der = ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii"))
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def generate_dev_cert(directory: Path) -> tuple[Path, Path, str]:
    """A self-signed certificate for ``localhost``, ``127.0.0.1`` and ``::1`` in
    ``directory`` (ECDSA P-256, valid a year): the one already there while it is valid for
    at least another week and matches its key, else a new one. Returns the certificate's
    path, the key's path (mode 0600) and the certificate's SHA-256 fingerprint."""
    cert_path, key_path, fp, _ = make_or_reuse_dev_cert(directory)
    return cert_path, key_path, fp


def make_or_reuse_dev_cert(directory: Path) -> tuple[Path, Path, str, bool]:
    """:func:`generate_dev_cert`, saying also whether this call made the certificate
    (True) or reused the one there (False), decided under the lock: a caller that undoes
    what it made must not take another router's new certificate for its own."""
    cert_path, key_path = directory / DEV_CERT_NAME, directory / DEV_KEY_NAME
    # one maker at a time: two routers started together must not end up with one's
    # certificate beside the other's key
    with open(directory / ".dev-cert.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing = _reusable(cert_path, key_path)
        if existing is not None:
            return cert_path, key_path, existing, False
        return cert_path, key_path, _make_dev_cert(cert_path, key_path), True


def _make_dev_cert(cert_path: Path, key_path: Path) -> str:

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ATP development certificate"),
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=DEV_CERT_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    _write_private(key_path, key_pem, 0o600)
    _write_private(cert_path, cert_pem, 0o644)
    return fingerprint(cert_pem)


def _reusable(cert_path: Path, key_path: Path) -> str | None:
    """The fingerprint of the dev cert in place when it can serve on: readable, valid
    for at least DEV_CERT_MIN_LEFT more, and its key matches (an SSLContext loads both)."""
    try:
        cert_pem = cert_path.read_bytes()
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(cert_pem)
        if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < DEV_CERT_MIN_LEFT:
            return None
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
        return fingerprint(cert_pem)
    except (OSError, ValueError):  # missing, unreadable, not PEM, mismatched (SSLError)
        return None


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the first byte (a temporary file
    created with that mode, then renamed over the old one)."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)  # the umask may have narrowed it; never widened beyond ``mode``
    os.replace(tmp, path)

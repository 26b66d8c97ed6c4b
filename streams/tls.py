"""TLS for the MLLP listener: the server context, what a client certificate proves, and why a
handshake failed. Pure: no sockets, no event loop.

- `mllp_tls_context` checks the `mllp_tls_*` / `mllp_plaintext` settings and builds the server
  context (TLS 1.2 or later), or says in one line what is wrong (`TlsConfigError`).
- Client certificates are requested, never demanded (`CERT_OPTIONAL`), and only when a client CA
  is configured: tenants that require none still connect over TLS without one. A certificate
  that is presented must verify against that CA (and only it), or the handshake fails.
- `PeerCertificate` is what a verified certificate tells: the SHA-256 fingerprint of its DER
  bytes and its subject CN. An unverified certificate tells nothing.
- A tenant's binding is a requirement checked after its MSH-3/MSH-4 identity resolved the tenant
  (`streams.tenants.TenantSpec.client_cert_refusal`): a certificate never chooses a tenant.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.settings import Settings

_HEX_FINGERPRINT = re.compile(r"[0-9a-f]{64}")

# Why a handshake failed, as counted in /metrics (a fixed set: label values).
HANDSHAKE_CLIENT_CERTIFICATE = "client_certificate"  # presented, but it did not verify
HANDSHAKE_ALERT = "alert"  # the client gave up, e.g. it does not trust the server certificate
HANDSHAKE_PROTOCOL = "protocol"  # not TLS, no common version or cipher, or cut short
_ALERTS = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")

# Why a tenant's message was refused for its certificate (IngestResult.reason, /metrics).
CERT_REQUIRED = "client_certificate_required"
CERT_MISMATCH = "client_certificate_mismatch"


class TlsConfigError(ValueError):
    """The MLLP listener settings cannot work; the message is one line naming the setting."""


def normalize_fingerprint(value: str) -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits.

    Accepts what operators paste: `openssl x509 -fingerprint -sha256` prints `AB:CD:...`.
    """
    digits = value.strip().replace(":", "").lower()
    if not _HEX_FINGERPRINT.fullmatch(digits):
        raise ValueError("must be a SHA-256 fingerprint: 64 hex digits, optionally ':'-separated")
    return digits


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The verified client certificate of a TLS connection."""

    fingerprint_sha256: str  # 64 lower-case hex digits, of the DER encoding
    subject_cn: str | None  # None unless the subject holds exactly one commonName

    def fingerprint_is(self, expected: str) -> bool:
        """Constant-time comparison with a normalized fingerprint."""
        return hmac.compare_digest(self.fingerprint_sha256.encode(), expected.encode())


def peer_certificate(ssl_object: ssl.SSLObject | None) -> PeerCertificate | None:
    """What the connection's client certificate proves: None on plaintext, without a
    certificate, or when it was not verified (its decoded form is empty then)."""
    if ssl_object is None:
        return None
    decoded = ssl_object.getpeercert()
    der = ssl_object.getpeercert(binary_form=True)
    if not decoded or der is None:
        return None
    return certificate_of(der, decoded)


def certificate_of(der: bytes, decoded: dict[str, Any]) -> PeerCertificate:
    """`PeerCertificate` from `SSLObject.getpeercert`'s binary and decoded forms."""
    names = [
        value
        for relative_name in decoded.get("subject", ())
        for key, value in relative_name
        if key == "commonName"
    ]
    # With several CNs, which one "is" the subject is a matter of opinion: a CN binding refuses.
    subject_cn = names[0] if len(names) == 1 else None
    return PeerCertificate(hashlib.sha256(der).hexdigest(), subject_cn)


def handshake_failure(error: ssl.SSLError) -> tuple[str, str]:
    """(kind, detail) of a failed handshake: a `HANDSHAKE_*` label and OpenSSL's reason, which
    names no content (e.g. `CERTIFICATE_VERIFY_FAILED: certificate has expired`)."""
    reason = error.reason or type(error).__name__
    if isinstance(error, ssl.SSLCertVerificationError):
        return HANDSHAKE_CLIENT_CERTIFICATE, f"{reason}: {error.verify_message}"
    if reason.startswith(_ALERTS):
        return HANDSHAKE_ALERT, reason
    return HANDSHAKE_PROTOCOL, reason


def report_handshake_failures(context: ssl.SSLContext, report: Callable[[str, str], None]) -> None:
    """Call `report(kind, detail)` whenever a handshake on `context` fails on a TLS error.

    asyncio and uvloop run the handshake inside their transports and tell nobody when it fails
    (not even a log line). Both create their SSL objects with `context.wrap_bio`, whose class is
    `context.sslobject_class`, a documented hook: the failure is seen where it is raised. A
    connection that closes or stays silent before any TLS error (a TCP health check, a port
    scan) is not a TLS failure and is not reported; the handshake timeout closes a silent one.
    """

    class _Reporting(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # not a failure: the handshake waits for the peer's next bytes
            except ssl.SSLError as error:
                # The transport must get the TLS error whatever reporting does.
                with contextlib.suppress(Exception):
                    report(*handshake_failure(error))
                raise

    context.sslobject_class = _Reporting


def mllp_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The MLLP TLS listener's server context, None when TLS is off (no certificate file).

    Raises `TlsConfigError` for settings that cannot work: no listener at all, TLS and plaintext
    on one port, a missing or unreadable file, a key that is not the certificate's.
    """
    cert, key, client_ca = (
        settings.mllp_tls_cert_file,
        settings.mllp_tls_key_file,
        settings.mllp_tls_client_ca_file,
    )
    if cert is None:
        if key is not None or client_ca is not None:
            raise TlsConfigError(
                "LANEWAY_MLLP_TLS_KEY_FILE and LANEWAY_MLLP_TLS_CLIENT_CA_FILE need "
                "LANEWAY_MLLP_TLS_CERT_FILE (TLS is off without it)"
            )
        if not settings.mllp_plaintext:
            raise TlsConfigError(
                "LANEWAY_MLLP_PLAINTEXT=false and no LANEWAY_MLLP_TLS_CERT_FILE: "
                "no MLLP listener would open"
            )
        return None
    if key is None:
        raise TlsConfigError("LANEWAY_MLLP_TLS_CERT_FILE is set, LANEWAY_MLLP_TLS_KEY_FILE is not")
    if settings.mllp_plaintext and settings.mllp_tls_port == settings.mllp_port:
        raise TlsConfigError(
            f"LANEWAY_MLLP_TLS_PORT and LANEWAY_MLLP_PORT are both {settings.mllp_port}: "
            "TLS needs a port of its own while LANEWAY_MLLP_PLAINTEXT is true"
        )
    _require_file("LANEWAY_MLLP_TLS_CERT_FILE", cert)
    _require_file("LANEWAY_MLLP_TLS_KEY_FILE", key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key)
    if client_ca is not None:
        _require_file("LANEWAY_MLLP_TLS_CLIENT_CA_FILE", client_ca)
        # Only this CA: never the system's public CAs, or any publicly issued certificate
        # with a tenant's CN in it would verify.
        _load_certificates("LANEWAY_MLLP_TLS_CLIENT_CA_FILE", client_ca, context)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _require_file(setting: str, path: Path) -> None:
    if not path.is_file():
        raise TlsConfigError(f"{setting}: no such file: {path}")


def _load_certificates(setting: str, path: Path, context: ssl.SSLContext) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as error:
        detail = getattr(error, "reason", None) or error.strerror or type(error).__name__
        raise TlsConfigError(f"{setting}: no PEM certificate in {path} ({detail})") from None


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    # Read the certificate alone first, so that a PEM error names the right file.
    _load_certificates("LANEWAY_MLLP_TLS_CERT_FILE", cert, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    try:
        context.load_cert_chain(cert, key, password=_no_password(key))
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise TlsConfigError(
                f"LANEWAY_MLLP_TLS_KEY_FILE {key} is not the key of the certificate in "
                f"LANEWAY_MLLP_TLS_CERT_FILE {cert}"
            ) from None
        raise TlsConfigError(f"LANEWAY_MLLP_TLS_KEY_FILE: no PEM private key in {key}") from None


def _no_password(key: Path) -> Callable[[], bytes]:
    # Without a callback, OpenSSL would prompt for the passphrase on the worker's terminal.
    def refuse() -> bytes:
        raise TlsConfigError(f"LANEWAY_MLLP_TLS_KEY_FILE {key} is encrypted; give it unencrypted")

    return refuse

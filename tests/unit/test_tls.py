"""MLLP TLS, pure parts: settings checks, the server context, what a client certificate proves,
why a handshake failed, a tenant's certificate binding and ingest's refusal.

Certificates are made here with the `openssl` CLI (a CA, a server certificate for 127.0.0.1,
two clients, and a rogue CA with a client of the same CN); handshakes run in memory (MemoryBIO),
no sockets. The real listener is tested in tests/integration/test_mllp_tls.py with `Pki`.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from agents.ingest.accept import Peer
from streams.settings import Settings
from streams.tenants import ClientCertificate, TenantPatch, TenantRecord, TenantSpec
from streams.tls import (
    CERT_MISMATCH,
    CERT_REQUIRED,
    HANDSHAKE_ALERT,
    HANDSHAKE_CLIENT_CERTIFICATE,
    HANDSHAKE_PROTOCOL,
    PeerCertificate,
    TlsConfigError,
    certificate_of,
    mllp_tls_context,
    normalize_fingerprint,
    peer_certificate,
    report_handshake_failures,
)
from tests.unit.test_ingest import CREATED, make_ingest, msh, tenant


def _openssl(*args: str | Path) -> str:
    done = subprocess.run(
        ["openssl", *map(str, args)], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout


@dataclass(frozen=True)
class Pki:
    """Test certificates: `ca` issued the server's and the clients' ("lab-a", "lab-b");
    `rogue` is another CA's client with the CN "lab-a"."""

    folder: Path
    ca: Path
    server: tuple[Path, Path]  # (certificate, key), for 127.0.0.1
    clients: dict[str, tuple[Path, Path]]

    @classmethod
    def make(cls, folder: Path) -> Pki:
        folder.mkdir(parents=True, exist_ok=True)
        ca = _authority(folder, "ca")
        rogue_ca = _authority(folder, "rogue-ca")
        return cls(
            folder,
            ca[0],
            _issue(folder, ca, "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1"),
            {
                "lab-a": _issue(folder, ca, "lab-a", "lab-a"),
                "lab-b": _issue(folder, ca, "lab-b", "lab-b"),
                "rogue": _issue(folder, rogue_ca, "rogue", "lab-a"),
            },
        )

    def fingerprint(self, client: str) -> str:
        """OpenSSL's own `SHA256 Fingerprint=AB:CD:...` of a client certificate, as pasted."""
        out = _openssl("x509", "-in", self.clients[client][0], "-noout", "-fingerprint", "-sha256")
        return out.strip().split("=", 1)[1]

    def settings(self, *, client_ca: bool = True, **fields: object) -> Settings:
        cert, key = self.server
        return Settings(
            mllp_tls_cert_file=cert,
            mllp_tls_key_file=key,
            mllp_tls_client_ca_file=self.ca if client_ca else None,
            **fields,  # type: ignore[arg-type]
        )

    def client_context(self, client: str | None, *, trust: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=trust or self.ca)
        if client is not None:
            context.load_cert_chain(*self.clients[client])
        return context


def _key(folder: Path, name: str) -> Path:
    key = folder / f"{name}.key"
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    return key


def _authority(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = _key(folder, name), folder / f"{name}.pem"
    subject = f"/CN={name}"
    _openssl("req", "-x509", "-new", "-key", key, "-out", cert, "-days", "2", "-subj", subject)
    return cert, key


def _issue(
    folder: Path, ca: tuple[Path, Path], name: str, cn: str, extension: str | None = None
) -> tuple[Path, Path]:
    key, request, cert = _key(folder, name), folder / f"{name}.csr", folder / f"{name}.pem"
    _openssl("req", "-new", "-key", key, "-out", request, "-subj", f"/CN={cn}")
    extra: list[str | Path] = []
    if extension is not None:
        (folder / f"{name}.ext").write_text(extension + "\n")
        extra = ["-extfile", folder / f"{name}.ext"]
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "2", *extra,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


def handshake(server: ssl.SSLContext, client: ssl.SSLContext | bytes) -> ssl.SSLObject:
    """The server side of a completed in-memory handshake; raises the server's SSLError.

    `client` may be raw bytes instead: a sender that does not speak TLS at all."""
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    if isinstance(client, bytes):
        server_in.write(client)
        server_side.do_handshake()
        raise AssertionError("the server accepted a handshake that was not TLS")
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(client_in, client_out, server_hostname="127.0.0.1")
    done: set[str] = set()
    for _ in range(10):
        for name, side in (("client", client_side), ("server", server_side)):
            if name in done:
                continue
            try:
                side.do_handshake()
                done.add(name)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                if side is server_side:
                    raise
                done.add(name)  # the client gave up: its alert is on the way to the server
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if "server" in done:
            return server_side
    raise AssertionError("the handshake did not complete")


# --- settings and the server context ---------------------------------------------------------


def test_tls_is_off_without_a_certificate_and_plaintext_stays_on() -> None:
    assert mllp_tls_context(Settings()) is None


def test_the_context_speaks_tls_1_2_and_later_and_trusts_only_the_client_ca(pki: Pki) -> None:
    context = mllp_tls_context(pki.settings())

    assert context is not None
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_OPTIONAL  # asked, so tenants without one connect
    # Never the system's public CAs: a publicly issued certificate with a tenant's CN in it
    # would verify.
    assert context.cert_store_stats()["x509"] == 1


def test_without_a_client_ca_no_client_certificate_is_asked(pki: Pki) -> None:
    context = mllp_tls_context(pki.settings(client_ca=False))

    assert context is not None and context.verify_mode is ssl.CERT_NONE
    assert peer_certificate(handshake(context, pki.client_context("lab-a"))) is None


BROKEN_SETTINGS: dict[str, tuple[Callable[[Pki], dict[str, object]], str]] = {
    "plaintext off, no TLS": (lambda _: {"mllp_plaintext": False}, "no MLLP listener would open"),
    "key without certificate": (
        lambda pki: {"mllp_tls_key_file": pki.server[1]},
        "need LANEWAY_MLLP_TLS_CERT_FILE",
    ),
    "certificate without key": (
        lambda pki: {"mllp_tls_cert_file": pki.server[0]},
        "LANEWAY_MLLP_TLS_KEY_FILE is not",
    ),
    "one port for both": (
        lambda pki: {**_server(pki), "mllp_port": 2575, "mllp_tls_port": 2575},
        "are both 2575",
    ),
    "missing certificate": (
        lambda pki: {**_server(pki), "mllp_tls_cert_file": pki.folder / "nope.pem"},
        "LANEWAY_MLLP_TLS_CERT_FILE: no such file",
    ),
    "key of another certificate": (
        lambda pki: {**_server(pki), "mllp_tls_key_file": pki.clients["lab-a"][1]},
        "is not the key of the certificate",
    ),
    "certificate is not PEM": (
        lambda pki: {**_server(pki), "mllp_tls_cert_file": pki.server[1]},
        "LANEWAY_MLLP_TLS_CERT_FILE: no PEM certificate",
    ),
    "key is not PEM": (
        lambda pki: {**_server(pki), "mllp_tls_key_file": pki.server[0]},
        "LANEWAY_MLLP_TLS_KEY_FILE: no PEM private key",
    ),
    "encrypted key": (
        lambda pki: {**_server(pki), "mllp_tls_key_file": _encrypted_key(pki)},
        "is encrypted",
    ),
    "client CA is not PEM": (
        lambda pki: {**_server(pki), "mllp_tls_client_ca_file": pki.server[1]},
        "LANEWAY_MLLP_TLS_CLIENT_CA_FILE: no PEM certificate",
    ),
}


def _server(pki: Pki) -> dict[str, object]:
    return {"mllp_tls_cert_file": pki.server[0], "mllp_tls_key_file": pki.server[1]}


def _encrypted_key(pki: Pki) -> Path:
    encrypted = pki.folder / "server-encrypted.key"
    if not encrypted.exists():
        _openssl(
            "pkey", "-in", pki.server[1], "-aes256", "-passout", "pass:secret", "-out", encrypted
        )
    return encrypted


@pytest.mark.parametrize("case", list(BROKEN_SETTINGS))
def test_settings_that_cannot_work_fail_in_one_line_naming_the_setting(pki: Pki, case: str) -> None:
    fields, expected = BROKEN_SETTINGS[case]

    with pytest.raises(TlsConfigError) as raised:
        mllp_tls_context(Settings(**fields(pki)))  # type: ignore[arg-type]

    assert expected in str(raised.value)
    assert "\n" not in str(raised.value)


# --- what a client certificate proves, and failed handshakes ----------------------------------


def test_a_verified_client_certificate_gives_its_fingerprint_and_cn(pki: Pki) -> None:
    context = mllp_tls_context(pki.settings())
    assert context is not None

    proved = peer_certificate(handshake(context, pki.client_context("lab-a")))

    assert proved == PeerCertificate(normalize_fingerprint(pki.fingerprint("lab-a")), "lab-a")


def test_tls_without_a_client_certificate_proves_nothing(pki: Pki) -> None:
    context = mllp_tls_context(pki.settings())
    assert context is not None

    assert peer_certificate(handshake(context, pki.client_context(None))) is None
    assert peer_certificate(None) is None  # plaintext


def test_a_subject_with_several_cns_has_no_cn_to_bind() -> None:
    subject = ((("commonName", "lab-a"),), (("commonName", "lab-b"),))

    assert certificate_of(b"der", {"subject": subject}).subject_cn is None


HANDSHAKE_FAILURES: dict[str, tuple[Callable[[Pki], ssl.SSLContext | bytes], str, str]] = {
    "client certificate of another CA": (
        lambda pki: pki.client_context("rogue"),
        HANDSHAKE_CLIENT_CERTIFICATE,
        "CERTIFICATE_VERIFY_FAILED",
    ),
    "client does not trust the server": (
        lambda pki: pki.client_context(None, trust=pki.folder / "rogue-ca.pem"),
        HANDSHAKE_ALERT,
        "ALERT",
    ),
    "plaintext MLLP on the TLS port": (
        lambda _: b"\x0bMSH|^~\\&|APP|FAC|LANEWAY|HUB|20240101120000||ADT^A01|1|P|2.5\r\x1c\r",
        HANDSHAKE_PROTOCOL,
        "",
    ),
}


@pytest.mark.parametrize("case", list(HANDSHAKE_FAILURES))
def test_a_failed_handshake_is_reported_once_with_its_kind(pki: Pki, case: str) -> None:
    client, kind, detail = HANDSHAKE_FAILURES[case]
    context = mllp_tls_context(pki.settings())
    assert context is not None
    reported: list[tuple[str, str]] = []
    report_handshake_failures(context, lambda *failure: reported.append(failure))

    with pytest.raises(ssl.SSLError):
        handshake(context, client(pki))

    [(reported_kind, reported_detail)] = reported
    assert reported_kind == kind and detail in reported_detail


def test_a_failing_report_never_replaces_the_tls_error(pki: Pki) -> None:
    context = mllp_tls_context(pki.settings())
    assert context is not None

    def broken(kind: str, detail: str) -> None:
        raise RuntimeError("reporting failed")

    report_handshake_failures(context, broken)

    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(context, pki.client_context("rogue"))
    assert peer_certificate(handshake(context, pki.client_context("lab-a"))) is not None


# --- a tenant's binding ----------------------------------------------------------------------

FINGERPRINT = "ab" * 32


def test_fingerprints_are_normalized_from_what_openssl_prints() -> None:
    assert normalize_fingerprint(":".join(["AB"] * 32)) == FINGERPRINT
    assert normalize_fingerprint(f" {FINGERPRINT.upper()} ") == FINGERPRINT


@pytest.mark.parametrize("bad", ["", "ab" * 31, "ab" * 33, "zz" * 32, "sha256:" + "ab" * 32])
def test_a_bad_fingerprint_is_a_422_naming_the_field(bad: str) -> None:
    body = {"id": "lab", "name": "Lab", "client_certs": [{"fingerprint_sha256": bad}]}

    with pytest.raises(ValidationError) as raised:
        TenantSpec.model_validate(body)

    [error] = raised.value.errors()
    assert error["loc"] == ("client_certs", 0, "fingerprint_sha256")


def test_a_binding_needs_a_fingerprint_or_a_cn() -> None:
    with pytest.raises(ValidationError) as raised:
        TenantSpec.model_validate({"id": "lab", "name": "Lab", "client_certs": [{}]})

    assert raised.value.errors()[0]["loc"] == ("client_certs", 0)


def test_requiring_a_certificate_needs_one_to_require() -> None:
    spec = TenantSpec(id="lab", name="Lab")

    with pytest.raises(ValidationError) as on_create:
        TenantSpec.model_validate({"id": "lab", "name": "Lab", "require_client_cert": True})
    with pytest.raises(ValidationError) as on_patch:
        TenantPatch(require_client_cert=True).apply(spec)

    for raised in (on_create, on_patch):
        assert raised.value.errors()[0]["loc"] == ("require_client_cert",)


def bound(*certificates: ClientCertificate, required: bool = True) -> TenantSpec:
    return TenantSpec(
        id="lab", name="Lab", client_certs=list(certificates), require_client_cert=required
    )


LAB_A = PeerCertificate(FINGERPRINT, "lab-a")


@pytest.mark.parametrize(
    ("spec", "presented", "refusal"),
    [
        (bound(ClientCertificate(subject_cn="x"), required=False), None, None),
        (bound(ClientCertificate(fingerprint_sha256=FINGERPRINT)), None, CERT_REQUIRED),
        (bound(ClientCertificate(fingerprint_sha256=FINGERPRINT)), LAB_A, None),
        (bound(ClientCertificate(fingerprint_sha256="cd" * 32)), LAB_A, CERT_MISMATCH),
        (bound(ClientCertificate(subject_cn="lab-a")), LAB_A, None),
        (bound(ClientCertificate(subject_cn="LAB-A")), LAB_A, CERT_MISMATCH),  # exact, no folding
        (
            bound(ClientCertificate(fingerprint_sha256="cd" * 32, subject_cn="lab-a")),
            LAB_A,
            CERT_MISMATCH,  # both given: both must match
        ),
        (
            bound(  # any one entry: an old and a new certificate while rotating
                ClientCertificate(fingerprint_sha256="cd" * 32),
                ClientCertificate(fingerprint_sha256=FINGERPRINT),
            ),
            LAB_A,
            None,
        ),
    ],
)
def test_a_required_binding_is_checked_against_the_presented_certificate(
    spec: TenantSpec, presented: PeerCertificate | None, refusal: str | None
) -> None:
    assert spec.client_cert_refusal(presented) == refusal


# --- ingest ----------------------------------------------------------------------------------


def requiring(tenant_id: str, application: str, cn: str) -> TenantRecord:
    record = tenant(tenant_id, application)
    binding = TenantPatch(client_certs=[ClientCertificate(subject_cn=cn)], require_client_cert=True)
    return record.revise(binding.apply(record), CREATED)


@pytest.mark.parametrize(
    ("peer", "reason", "text"),
    [
        (Peer(), CERT_REQUIRED, "Client certificate required"),
        (Peer(certificate=PeerCertificate(FINGERPRINT, "lab-b")), CERT_MISMATCH, "does not match"),
    ],
)
async def test_an_mllp_frame_without_the_tenants_certificate_is_refused_whole_with_ae(
    peer: Peer, reason: str, text: str
) -> None:
    ingest, writer = make_ingest(requiring("lab", "A", "lab-a"))

    results = await ingest.from_mllp(msh("A", "FAC", "M0") + msh("A", "FAC", "M1"), peer)

    assert [(r.control_id, r.tenant_id, r.reason) for r in results] == [
        ("M0", "lab", reason),
        ("M1", "lab", reason),
    ]
    assert writer.written == []
    for result in results:
        [ack] = ingest.acks(result, CREATED)
        assert ack.code == "AE" and b"\rERR|" in ack.payload and text.encode() in ack.payload


async def test_the_right_certificate_is_accepted_and_http_never_asks_for_one() -> None:
    ingest, writer = make_ingest(requiring("lab", "A", "lab-a"))
    over_tls = Peer(certificate=PeerCertificate(FINGERPRINT, "lab-a"))

    [by_mllp] = await ingest.from_mllp(msh("A", "FAC", "M0"), over_tls)
    [by_http] = await ingest.from_http("lab", msh("A", "FAC", "M1"))

    assert by_mllp.accepted and by_http.accepted
    assert [tenant_id for tenant_id, _ in writer.written] == ["lab", "lab"]

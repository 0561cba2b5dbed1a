"""TLS and mutual TLS on a real loopback server, with certificates made at test time."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fanout.server.tls import ServerTls, TlsConfigError, bind, load_material
from fanout.settings import Settings

ECHO = "/test.Echo/Echo"
TIMEOUT = 10.0


# -- a small PKI ------------------------------------------------------------------------


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        return cert_path, key_path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(ca: Issued, common_name: str, *, server: bool) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass
class Pki:
    folder: Path
    ca: Issued
    other_ca: Issued
    server: Issued
    other_server: Issued  # signed by other_ca
    client: Issued
    rogue_client: Issued  # signed by other_ca

    def ca_file(self, ca: Issued, stem: str) -> Path:
        path = self.folder / f"{stem}.pem"
        path.write_bytes(ca.cert_pem)
        return path


@pytest.fixture(scope="module")
def pki_material() -> tuple[Issued, ...]:
    ca, other_ca = make_ca("fanout test CA"), make_ca("another CA")
    return (
        ca,
        other_ca,
        issue(ca, "fanout-server", server=True),
        issue(other_ca, "fanout-server-rotated", server=True),
        issue(ca, "argo-genome", server=False),
        issue(other_ca, "intruder", server=False),
    )


@pytest.fixture
def pki(tmp_path: Path, pki_material: tuple[Issued, ...]) -> Pki:
    return Pki(tmp_path, *pki_material)


# -- a tiny server ----------------------------------------------------------------------


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    # The client certificate's common name, when there is one: proof it reached the server.
    names: list[bytes] = context.auth_context().get("x509_common_name") or [b"-"]
    return request + b"|" + names[0]


@dataclass
class Running:
    server: grpc.Server
    port: int
    tls: ServerTls | None


Starter = Callable[[Settings], Running]


@pytest.fixture
def start() -> Iterator[Starter]:
    started: list[grpc.Server] = []

    def run(settings: Settings) -> Running:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
                ),
            )
        )
        tls = ServerTls.from_settings(settings)
        port = bind(server, settings, tls)
        server.start()
        started.append(server)
        return Running(server, port, tls)

    yield run
    for server in started:
        server.stop(None)


def tls_settings(pki: Pki, *, client_ca: bool = False) -> Settings:
    cert, key = pki.server.write(pki.folder, "server")
    return Settings(
        listen="127.0.0.1:0",
        tls_cert_file=cert,
        tls_key_file=key,
        tls_client_ca_file=pki.ca_file(pki.ca, "client-ca") if client_ca else None,
    )


def credentials(trust: Issued, client: Issued | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=trust.cert_pem,
        private_key=None if client is None else client.key_pem,
        certificate_chain=None if client is None else client.cert_pem,
    )


def echo(port: int, creds: grpc.ChannelCredentials | None) -> bytes:
    target = f"127.0.0.1:{port}"
    # A private subchannel pool: each call makes a fresh connection and handshake.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channel = (
        grpc.insecure_channel(target, options=options)
        if creds is None
        else grpc.secure_channel(target, creds, options=options)
    )
    with channel:
        answer: bytes = channel.unary_unary(ECHO)(b"ping", timeout=TIMEOUT)
        return answer


def refused(port: int, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        echo(port, creds)
    code: grpc.StatusCode = caught.value.code()
    return code


# -- server TLS -------------------------------------------------------------------------


def test_tls_server_answers_a_client_that_trusts_its_ca(pki: Pki, start: Starter) -> None:
    running = start(tls_settings(pki))
    assert running.tls is not None and not running.tls.requires_client_certificates
    assert echo(running.port, credentials(pki.ca)) == b"ping|-"
    with grpc.secure_channel(f"127.0.0.1:{running.port}", credentials(pki.ca)) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_plaintext_client_gets_no_answer_from_tls_server(pki: Pki, start: Starter) -> None:
    running = start(tls_settings(pki))
    assert refused(running.port, None) == grpc.StatusCode.UNAVAILABLE


def test_client_refuses_a_server_certificate_from_another_ca(pki: Pki, start: Starter) -> None:
    running = start(tls_settings(pki))
    assert refused(running.port, credentials(pki.other_ca)) == grpc.StatusCode.UNAVAILABLE


# -- mutual TLS -------------------------------------------------------------------------


def test_mutual_tls_accepts_a_client_certificate_from_the_client_ca(
    pki: Pki, start: Starter
) -> None:
    running = start(tls_settings(pki, client_ca=True))
    assert running.tls is not None and running.tls.requires_client_certificates
    assert echo(running.port, credentials(pki.ca, pki.client)) == b"ping|argo-genome"


def test_mutual_tls_refuses_a_client_without_certificate(pki: Pki, start: Starter) -> None:
    running = start(tls_settings(pki, client_ca=True))
    assert refused(running.port, credentials(pki.ca)) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_client_certificate_from_another_ca(pki: Pki, start: Starter) -> None:
    running = start(tls_settings(pki, client_ca=True))
    code = refused(running.port, credentials(pki.ca, pki.rogue_client))
    assert code == grpc.StatusCode.UNAVAILABLE


# -- reload -----------------------------------------------------------------------------


def test_reload_serves_the_new_certificate_to_new_connections(pki: Pki, start: Starter) -> None:
    settings = tls_settings(pki)
    running = start(settings)
    tls = running.tls
    assert tls is not None
    before = tls.fingerprint
    assert echo(running.port, credentials(pki.ca)) == b"ping|-"
    assert tls.reload() is False  # unchanged files: nothing to swap

    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    settings.tls_cert_file.write_bytes(pki.other_server.cert_pem)
    settings.tls_key_file.write_bytes(pki.other_server.key_pem)
    assert tls.reload() is True

    assert tls.fingerprint != before
    assert echo(running.port, credentials(pki.other_ca)) == b"ping|-"
    assert refused(running.port, credentials(pki.ca)) == grpc.StatusCode.UNAVAILABLE


def test_reload_of_a_mismatched_key_keeps_the_old_certificate(pki: Pki, start: Starter) -> None:
    settings = tls_settings(pki)
    running = start(settings)
    tls = running.tls
    assert tls is not None and settings.tls_cert_file is not None
    before = tls.fingerprint
    # Half-updated Secret: the new certificate beside the old key.
    settings.tls_cert_file.write_bytes(pki.other_server.cert_pem)
    with pytest.raises(TlsConfigError) as caught:
        tls.reload()
    assert caught.value.field == "tls_key_file"
    assert tls.fingerprint == before
    assert echo(running.port, credentials(pki.ca)) == b"ping|-"


def test_reload_of_the_client_ca_changes_which_clients_are_admitted(
    pki: Pki, start: Starter
) -> None:
    settings = tls_settings(pki, client_ca=True)
    running = start(settings)
    assert running.tls is not None and settings.tls_client_ca_file is not None
    assert echo(running.port, credentials(pki.ca, pki.client)) == b"ping|argo-genome"

    settings.tls_client_ca_file.write_bytes(pki.other_ca.cert_pem)
    assert running.tls.reload() is True

    assert echo(running.port, credentials(pki.ca, pki.rogue_client)) == b"ping|intruder"
    code = refused(running.port, credentials(pki.ca, pki.client))
    assert code == grpc.StatusCode.UNAVAILABLE


# -- bad files name their setting -------------------------------------------------------


def test_missing_certificate_file_names_the_setting(pki: Pki) -> None:
    _, key = pki.server.write(pki.folder, "server")
    with pytest.raises(TlsConfigError) as caught:
        load_material(pki.folder / "absent.crt", key)
    assert caught.value.field == "tls_cert_file"
    assert "absent.crt" in str(caught.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "empty"), (b"not a certificate\n", "no PEM certificate"), (b"\xff\xfe", "not PEM")],
)
def test_unusable_certificate_names_the_setting(pki: Pki, content: bytes, problem: str) -> None:
    cert, key = pki.server.write(pki.folder, "server")
    cert.write_bytes(content)
    with pytest.raises(TlsConfigError) as caught:
        load_material(cert, key)
    assert caught.value.field == "tls_cert_file"
    assert problem in caught.value.description


def test_corrupt_certificate_body_is_refused(pki: Pki) -> None:
    cert, key = pki.server.write(pki.folder, "server")
    lines = pki.server.cert_pem.splitlines()
    lines[2] = b"A" * len(lines[2])
    cert.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(TlsConfigError) as caught:
        load_material(cert, key)
    assert caught.value.field in ("tls_cert_file", "tls_key_file")


def test_key_of_another_certificate_is_refused(pki: Pki) -> None:
    cert, _ = pki.server.write(pki.folder, "server")
    _, other_key = pki.other_server.write(pki.folder, "other")
    with pytest.raises(TlsConfigError) as caught:
        load_material(cert, other_key)
    assert caught.value.field == "tls_key_file"


def test_encrypted_key_is_refused_without_prompting(pki: Pki) -> None:
    cert, key = pki.server.write(pki.folder, "server")
    key.write_bytes(
        pki.server.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TlsConfigError) as caught:
        load_material(cert, key)
    assert caught.value.field == "tls_key_file"
    assert "encrypted" in caught.value.description


def test_unusable_client_ca_names_the_setting(pki: Pki) -> None:
    cert, key = pki.server.write(pki.folder, "server")
    ca = pki.folder / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n")
    with pytest.raises(TlsConfigError) as caught:
        load_material(cert, key, ca)
    assert caught.value.field == "tls_client_ca_file"


def test_material_fingerprint_is_the_leaf_certificate_hash(pki: Pki) -> None:
    cert, key = pki.server.write(pki.folder, "server")
    material = load_material(cert, key)
    assert material.fingerprint == pki.server.cert.fingerprint(hashes.SHA256()).hex()


# -- settings and binding ---------------------------------------------------------------


def test_no_tls_settings_mean_no_tls(pki: Pki) -> None:
    assert ServerTls.from_settings(Settings()) is None


def test_client_ca_without_server_certificate_is_refused(pki: Pki) -> None:
    settings = Settings(tls_client_ca_file=pki.ca_file(pki.ca, "ca"))
    with pytest.raises(TlsConfigError) as caught:
        ServerTls.from_settings(settings)
    assert caught.value.field == "tls_client_ca_file"


def test_insecure_plaintext_is_logged_as_a_warning(
    start: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fanout.server.tls"):
        running = start(Settings(listen="127.0.0.1:0", insecure=True, token_file=Path("t")))
    assert running.tls is None
    assert echo(running.port, None) == b"ping|-"
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "plaintext" in record.getMessage() and "bearer tokens" in record.getMessage()


def test_loopback_plaintext_without_insecure_logs_no_warning(
    start: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fanout.server.tls"):
        running = start(Settings(listen="127.0.0.1:0"))
    assert running.tls is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

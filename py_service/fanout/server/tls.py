"""Server TLS and mutual TLS from PEM files, reloadable without a restart.

gRPC asks `ServerTls._fetch` for a certificate configuration at every new handshake;
`reload()` validates the files and hands the next handshake the new configuration, so
connections opened after a reload see the new certificate and client CA, and
connections already open keep theirs. See docs/security.md.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc

from fanout.settings import Settings

log = logging.getLogger(__name__)

# A file re-read after validation must match what was validated (a Kubernetes Secret
# update swaps the files under us); past this many tries the reload gives up.
_READ_ATTEMPTS = 3
_MAX_PEM_BYTES = 1 << 20


class TlsConfigError(ValueError):
    """A TLS file is missing or unusable; `field` names its setting (e.g. `tls_key_file`)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


@dataclass(frozen=True)
class TlsMaterial:
    """The validated bytes of one certificate configuration."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the leaf certificate's DER encoding, as `openssl x509 -fingerprint`."""
        return _leaf_fingerprint(self.certificate_chain)


def _read(field: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(field, f"cannot read {path}: {exc.strerror}") from exc
    if not data.strip():
        raise TlsConfigError(field, f"{path} is empty")
    if len(data) > _MAX_PEM_BYTES:
        raise TlsConfigError(field, f"{path} is larger than {_MAX_PEM_BYTES} bytes")
    return data


def _pem_text(field: str, data: bytes, path: Path) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise TlsConfigError(field, f"{path} is not PEM text") from exc


def _leaf_fingerprint(chain: bytes) -> str:
    text = chain.decode("ascii")
    begin = text.index("-----BEGIN CERTIFICATE-----")
    end_marker = "-----END CERTIFICATE-----"
    end = text.index(end_marker, begin) + len(end_marker)
    der = ssl.PEM_cert_to_DER_cert(text[begin:end])
    return hashlib.sha256(der).hexdigest()


def _refuse_encrypted_key() -> NoReturn:
    # Called by `load_cert_chain` only for an encrypted key; without it the ssl module
    # would prompt on the terminal. gRPC itself cannot use an encrypted key.
    raise TlsConfigError("tls_key_file", "is encrypted; gRPC needs an unencrypted PEM key")


def _validate(
    cert_file: Path, key_file: Path, client_ca_file: Path | None, material: TlsMaterial
) -> None:
    """Parse the files with the stdlib TLS library, naming the setting that fails."""
    cert_text = _pem_text("tls_cert_file", material.certificate_chain, cert_file)
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise TlsConfigError("tls_cert_file", f"{cert_file} holds no PEM certificate")
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.load_verify_locations(cadata=cert_text)
    except ssl.SSLError as exc:
        raise TlsConfigError(
            "tls_cert_file", f"{cert_file} is not a valid PEM certificate: {exc}"
        ) from exc
    _pem_text("tls_key_file", material.private_key, key_file)
    try:
        probe.load_cert_chain(cert_file, key_file, password=_refuse_encrypted_key)
    except ssl.SSLError as exc:
        raise TlsConfigError(
            "tls_key_file",
            f"{key_file} is not a PEM private key matching {cert_file}: {exc.reason or exc}",
        ) from exc
    if client_ca_file is not None and material.client_ca is not None:
        ca_text = _pem_text("tls_client_ca_file", material.client_ca, client_ca_file)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cadata=ca_text)
        except ssl.SSLError as exc:
            raise TlsConfigError(
                "tls_client_ca_file", f"{client_ca_file} holds no usable PEM certificate: {exc}"
            ) from exc


def load_material(
    cert_file: Path, key_file: Path, client_ca_file: Path | None = None
) -> TlsMaterial:
    """Read and validate the files; raises `TlsConfigError` naming the bad setting."""
    for _ in range(_READ_ATTEMPTS):
        material = TlsMaterial(
            _read("tls_cert_file", cert_file),
            _read("tls_key_file", key_file),
            None if client_ca_file is None else _read("tls_client_ca_file", client_ca_file),
        )
        # `load_cert_chain` reads by path, so the files are read once more afterwards:
        # only bytes that are the ones validated are served.
        _validate(cert_file, key_file, client_ca_file, material)
        again = TlsMaterial(
            _read("tls_cert_file", cert_file),
            _read("tls_key_file", key_file),
            None if client_ca_file is None else _read("tls_client_ca_file", client_ca_file),
        )
        if again == material:
            return material
    raise TlsConfigError("tls_cert_file", "the TLS files kept changing while read; reload again")


def _configuration(material: TlsMaterial) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(material.private_key, material.certificate_chain)],
        root_certificates=material.client_ca,
    )


class ServerTls:
    """Credentials for one server whose files `reload()` re-reads (e.g. on SIGHUP)."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self._lock = threading.Lock()
        self._material = load_material(cert_file, key_file, client_ca_file)
        self._pending: Any = None
        # With a client CA, a handshake without a client certificate signed by it fails.
        self.credentials: grpc.ServerCredentials = grpc.dynamic_ssl_server_credentials(
            _configuration(self._material),
            self._fetch,
            require_client_authentication=client_ca_file is not None,
        )
        log.info(
            "TLS certificate loaded",
            extra={
                "cert_file": str(cert_file),
                "sha256": self._material.fingerprint,
                "client_certificates_required": self.requires_client_certificates,
            },
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerTls | None:
        """`None` when the settings ask for no TLS; a client CA without a certificate is refused."""
        if settings.tls_cert_file is None or settings.tls_key_file is None:
            if settings.tls_client_ca_file is not None:
                raise TlsConfigError(
                    "tls_client_ca_file", "needs tls_cert_file and tls_key_file (mutual TLS)"
                )
            return None
        return cls(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)

    @property
    def requires_client_certificates(self) -> bool:
        return self.client_ca_file is not None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate new connections are offered."""
        with self._lock:
            return self._material.fingerprint

    def reload(self) -> bool:
        """Re-read the files; `True` when they changed.

        Bad files raise `TlsConfigError` and leave the served certificate as it was.
        """
        material = load_material(self.cert_file, self.key_file, self.client_ca_file)
        with self._lock:
            if material == self._material:
                return False
            self._material = material
            self._pending = _configuration(material)
        log.info(
            "TLS certificate reloaded",
            extra={"cert_file": str(self.cert_file), "sha256": material.fingerprint},
        )
        return True

    def _fetch(self) -> Any:
        # gRPC calls this before each new handshake; None keeps the current configuration.
        with self._lock:
            pending, self._pending = self._pending, None
        return pending


def bind(server: grpc.Server, settings: Settings, tls: ServerTls | None) -> int:
    """Add `settings.listen` to `server`, with `tls` when given; returns the bound port.

    The caller has already refused plaintext on a non-loopback address without
    `--insecure`; what remains is said in the log.
    """
    if tls is not None:
        port = server.add_secure_port(settings.listen, tls.credentials)
    else:
        port = server.add_insecure_port(settings.listen)
        if settings.insecure:
            log.warning(
                "serving plaintext gRPC on %s (--insecure): anyone on the network path "
                "can read and alter requests%s; configure --tls-cert-file and --tls-key-file",
                settings.listen,
                " and steal bearer tokens" if settings.token_file is not None else "",
            )
    if port == 0:
        raise OSError(f"could not bind {settings.listen}")
    return int(port)


__all__ = ["ServerTls", "TlsConfigError", "TlsMaterial", "bind", "load_material"]

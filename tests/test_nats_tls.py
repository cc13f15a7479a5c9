"""TLS to NATS: a `tls://` URL, a CA of the test's own making, and client certificates (mutual TLS)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jetdag.natsserver import TlsFiles
from shared.subjects import Names
from tests.conftest import Stack, start_secure_nats
from tests.helpers import wait_for


class Ca:
    """A self-signed CA that issues certificates, written as PEM files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jetdag test CA")])
        self.cert = (
            self._builder(name, self.key.public_key())
            .issuer_name(name)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = self._write("ca.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def _builder(subject: x509.Name, key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path

    def issue(self, name: str, *, server: bool) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key())
            .issuer_name(self.cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return self._write(f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM)), self._write(
            f"{name}-key.pem", key_pem
        )


@pytest.mark.parametrize("verify_clients", [False, True], ids=["server-tls", "mutual-tls"])
async def test_services_connect_over_tls_and_verify_the_server(
    tmp_path: Path, namespace: str, http: httpx.AsyncClient, verify_clients: bool
) -> None:
    ca = Ca(tmp_path / "pki")
    cert, key = ca.issue("nats-server", server=True)
    names = Names(namespace)
    secure = start_secure_nats(tmp_path, names, tls=TlsFiles(cert=cert, key=key, ca=ca.path, verify_clients=True))
    # The secure stack, on TLS as well: each service with its role's nkey over a verified TLS connection.
    assert secure.url.startswith("tls://")
    stack = Stack(secure.url, namespace, tmp_path / "logs", credentials=secure.keys)
    try:
        tls_env = {"NATS_CA": str(ca.path)}
        if verify_clients:
            client_cert, client_key = ca.issue("jetdag-service", server=False)
            tls_env |= {"NATS_CERT": str(client_cert), "NATS_KEY": str(client_key)}
        else:
            # Without the CA the server's certificate is not trusted: the service says so and does not connect.
            untrusting = stack.process("registry-no-ca", "services.registry").start()
            await wait_for(
                lambda: untrusting.has_logged("nats TLS handshake failed"), message="the untrusted server refused"
            )
            assert "CERTIFICATE_VERIFY_FAILED" in untrusting.tail()
            # A server that verifies clients refuses one without a certificate.
            lone = stack.process("registry-no-cert", "services.registry", NATS_CA=str(ca.path)).start()
            await wait_for(
                lambda: lone.has_logged("nats TLS handshake failed"), message="no client certificate refused"
            )
            assert "CERTIFICATE_REQUIRED" in lone.tail()
            assert not lone.has_logged("service ready") and not untrusting.has_logged("service ready")
            return
        await stack.up(workers=1, **tls_env)
        r = await http.get(f"{stack.url}/health")
        assert r.status_code == 200, r.text
        assert secure.violations() == []
    finally:
        stack.stop_all()
        secure.server.stop()

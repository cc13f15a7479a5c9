"""TLS to NATS: a `tls://` URL, a CA of the test's own making, and client certificates (mutual TLS)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from jetdag.natsserver import TlsFiles
from shared.subjects import Names
from tests.conftest import Stack, start_secure_nats
from tests.helpers import wait_for
from tests.pki import Ca


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

"""TLS end to end: serve --certfile/--keyfile with a certificate made here, trusted via its CA."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import trustme

from kernelserver import Client
from kernelserver.errors import ConnectionFailed

from helpers import start_server

pytestmark = pytest.mark.slow


def test_https_end_to_end(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    server = start_server(tmp_path, "--certfile", str(cert_file), "--keyfile", str(key_file),
                          scheme="https", verify=str(ca_file))
    try:
        assert server.url.startswith("https://")
        with Client(server.url, server.token, verify=str(ca_file)) as client:
            result = client.namespace("tls").run("print('over tls')\n6 * 7")
            assert result.stdout == "over tls\n" and result.result == {"text/plain": "42"}
            events = list(client.namespace("tls").run("print('streamed')", stream=True))
            assert events[0] == {"event": "stdout", "text": "streamed\n"}
        # Plain HTTP to the TLS port gets nowhere, and an untrusted certificate is refused.
        with pytest.raises(requests.RequestException):
            requests.get(server.url.replace("https://", "http://") + "/health", timeout=5)
        with Client(server.url, server.token) as untrusting, pytest.raises(ConnectionFailed):
            untrusting.health()
    finally:
        server.stop()


def test_certfile_without_keyfile_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    done = subprocess.run([sys.executable, "-m", "kernelserver.cli", "serve", "--certfile", str(cert),
                           "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr == "kernelserver: error: --certfile and --keyfile go together\n"

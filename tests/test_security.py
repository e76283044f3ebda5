"""The protections docs/security.md names, each against a real server."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from kernelserver import tokenfile
from kernelserver.client import Client
from kernelserver.config import load_config
from kernelserver.web.serving import gunicorn_options

from helpers import TOKEN, LiveServer, free_port, start_server, wait_until

pytestmark = pytest.mark.slow


def _outward_ipv4() -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 9))
            address = str(sock.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_serve_binds_loopback_only_by_default(tmp_path: Path) -> None:
    assert gunicorn_options(load_config({"data_dir": str(tmp_path)}), None, None)["bind"].startswith(
        "127.0.0.1:")
    outward = _outward_ipv4()
    if outward is None:
        return  # no other interface to try from; the bind address above is still checked
    server = start_server(tmp_path)
    try:
        port = int(server.url.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            socket.create_connection((outward, port), timeout=2).close()
    finally:
        server.stop()


def test_cross_site_simple_requests_without_the_token_run_nothing(live_server: LiveServer,
                                                                    tmp_path: Path) -> None:
    # What a page on another site can make a browser send without a CORS preflight: form posts
    # and text/plain bodies, with cookies but never an Authorization header.
    marker = tmp_path / "csrf-ran"
    code = f"open({str(marker)!r}, 'w').write('x')"
    origin = {"Origin": "http://evil.example"}
    answers = [
        requests.post(live_server.url + "/execute", data={"code": code}, headers=origin, timeout=10),
        requests.post(live_server.url + "/execute", files={"code": (None, code)}, headers=origin,
                      timeout=10),
        requests.post(live_server.url + "/execute", data=f'{{"code": {code!r}}}',
                      headers={**origin, "Content-Type": "text/plain"}, timeout=10),
        requests.get(live_server.url + "/execute", params={"code": code}, headers=origin, timeout=10),
    ]
    for answer in answers:
        assert answer.status_code in (401, 405), answer.text
        assert not any(h.lower().startswith("access-control") for h in answer.headers)
    assert not marker.exists()


def test_dns_rebinding_host_is_refused_even_with_the_token(live_server: LiveServer) -> None:
    # A rebinding page reaches 127.0.0.1 under its own name; the Host header gives it away.
    port = live_server.url.rsplit(":", 1)[1]
    answer = requests.get(live_server.url + "/info", timeout=10,
                          headers={**live_server.headers, "Host": f"evil.example:{port}"})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "host_not_allowed"


def test_token_never_appears_in_the_server_log(tmp_path: Path) -> None:
    wrong = "wrong-token-that-must-not-be-logged-42"
    server = start_server(tmp_path, env={"KERNELSERVER_TOKEN": TOKEN})
    try:
        url, good = server.url, server.headers
        requests.post(url + "/execute", json={"code": "1/0"}, headers=good, timeout=10)
        requests.post(url + "/execute", json={"code": "1"}, headers={"Authorization": f"Bearer {wrong}"},
                      timeout=10)
        requests.post(url + "/execute", params={"token": TOKEN}, json={"code": "1"}, timeout=10)
        requests.post(url + "/execute", headers={**good, "Content-Type": "application/json"},
                      data=b"{not json", timeout=10)
        requests.post(url + "/env/create", json={"id": "../bad"}, headers=good, timeout=10)
        requests.get(url + "/nowhere", headers=good, timeout=10)
        requests.get(url + "/health", headers={"Authorization": f"Bearer {wrong}"}, timeout=10)
    finally:
        server.stop()
    log = server.output()
    assert "from --token / KERNELSERVER_TOKEN" in log  # the log was written to
    assert TOKEN not in log and wrong not in log


def test_token_on_the_command_line_gets_a_warning(tmp_path: Path) -> None:
    server = start_server(tmp_path)  # conftest passes --token
    server.stop()
    assert "visible to other local users" in server.output()


def test_data_dir_history_and_token_file_are_private_to_the_user(live_server: LiveServer) -> None:
    data_dir = live_server.data_dir
    assert wait_until(lambda: tokenfile.path(str(data_dir)).exists(), 5)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "history.sqlite3").stat().st_mode) == 0o600
    assert stat.S_IMODE(tokenfile.path(str(data_dir)).stat().st_mode) == 0o600


def test_kernelserver_token_prints_it_and_local_clients_use_it(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_server(tmp_path, token="")  # generated
    try:
        env = {**os.environ, "KERNELSERVER_DATA_DIR": str(server.data_dir)}
        env.pop("KERNELSERVER_TOKEN", None)
        printed = subprocess.run([sys.executable, "-m", "kernelserver.cli", "token"], env=env,
                                 capture_output=True, text=True, timeout=30)
        assert printed.returncode == 0, printed.stderr
        token = printed.stdout.strip()
        assert token in server.output()  # the one the server printed at start
        ran = subprocess.run([sys.executable, "-m", "kernelserver.cli", "exec", "--url", server.url,
                              "print(6 * 7)"], env=env, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0 and ran.stdout == "42\n", ran.stderr
        port = server.url.rsplit(":", 1)[1]
        assert tokenfile.token_for(f"http://localhost:{port}", str(server.data_dir)) == token
        # Never sent anywhere else: another port, or a host that is not this machine.
        assert tokenfile.token_for(f"http://127.0.0.1:{free_port()}", str(server.data_dir)) is None
        assert tokenfile.token_for(f"http://example.com:{port}", str(server.data_dir)) is None
        monkeypatch.setenv("KERNELSERVER_DATA_DIR", str(server.data_dir))
        monkeypatch.delenv("KERNELSERVER_TOKEN", raising=False)
        with Client(f"http://example.invalid:{port}") as remote:
            assert "Authorization" not in remote.session.headers
        with Client(server.url) as local:
            assert local.run("1 + 1").result == {"text/plain": "2"}
    finally:
        server.stop()
    assert not tokenfile.path(str(server.data_dir)).exists()  # removed on a clean stop
    gone = subprocess.run([sys.executable, "-m", "kernelserver.cli", "token", "--data-dir",
                           str(server.data_dir)], capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and "no token file" in gone.stderr

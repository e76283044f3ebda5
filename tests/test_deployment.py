"""docs/deployment.md as a newcomer copies it: nginx in front, with the doc's own config.

nginx runs the doc's ```nginx block as it stands (only its listen port, its certificate paths and
the upstream port are changed, each exactly once, so the doc cannot drift from what is tested), in
front of a server started with the doc's serve flags. Through it: the v1 API, a stream that
arrives line by line, Jupyter's channels WebSocket with the Origin a client of the public name
sends, a foreign Origin refused, the doc's curl examples, the README's CI script and
jupyter_server's gateway client (what `jupyter lab --gateway-url` uses).

Every ```sh block of the doc is either run here (its marker says how) or marked `<!-- not run by
tests/test_deployment.py: why -->`. nginx is Debian's `nginx` package; without it those tests
skip (CI installs it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
import websocket

from helpers import TOKEN, LiveServer, free_port, jupyter_gateway, start_server, wait_until
from jupyter_ws import KernelClient, of_type

pytestmark = pytest.mark.slow  # a real server behind a real nginx

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "deployment.md"
FENCE = re.compile(r"^(?P<before>[^\n]*)\n```(?P<lang>\w+)\n(?P<body>.*?)\n```$", re.S | re.M)
NOT_RUN = "not run by tests/test_deployment.py"
# The markers (`<!-- marker: ... -->` on the line above a block) of the blocks this file runs.
RUN_HERE = {
    "nginx config": "nginx",
    "serve behind the proxy": "sh",
    "through the proxy": "sh",
}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Block:
    marker: str  # the words before the colon of the HTML comment on the line above, or ""
    note: str  # the words after it
    lang: str
    body: str


def doc_blocks() -> list[Block]:
    found = []
    for match in FENCE.finditer(DOC.read_text()):
        before = match["before"].strip()
        marker = note = ""
        if before.startswith("<!--") and before.endswith("-->"):
            marker, _, note = before[4:-3].partition(":")
        found.append(Block(marker.strip(), note.strip(), match["lang"], match["body"]))
    return found


def doc_block(marker: str) -> str:
    """The body of the one block marked `<!-- marker: ... -->`."""
    bodies = [b.body for b in doc_blocks() if b.marker == marker]
    assert len(bodies) == 1, f"docs/deployment.md has {len(bodies)} blocks marked {marker!r}"
    return bodies[0]


def substitute(text: str, *pairs: tuple[str, str]) -> str:
    """Each old string replaced by its new one; each must occur exactly once."""
    for old, new in pairs:
        assert text.count(old) == 1, f"expected {old!r} once in:\n{text}"
        text = text.replace(old, new)
    return text


def args_after(block: str, command: str) -> list[str]:
    """The arguments of the one line of block that runs `command`."""
    lines = [line for line in block.splitlines() if line.strip().startswith(command + " ")]
    assert len(lines) == 1, (command, block)
    return shlex.split(lines[0].split("#", 1)[0])[len(command.split()):]


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Signal, wait with a timeout, then kill."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


# -- the doc itself --------------------------------------------------------------------------


def test_every_shell_example_is_run_here_or_says_why_not() -> None:
    blocks = doc_blocks()
    for block in blocks:
        if block.lang == "sh" and block.marker not in RUN_HERE:
            assert block.marker == NOT_RUN and len(block.note) > 10, \
                f"a shell example neither run here nor said why not:\n{block.body}"
    for marker, lang in RUN_HERE.items():
        assert [b.lang for b in blocks if b.marker == marker] == [lang], marker


def test_every_curl_with_a_json_body_says_it_is_json() -> None:
    """`curl -d` sends form's Content-Type, and the server answers 400 to JSON sent as a form."""
    commands = 0
    for block in doc_blocks():
        if block.lang != "sh":
            continue
        for command in block.body.replace("\\\n", " ").splitlines():
            if re.search(r"\bcurl\b", command) and re.search(r"\s(-d|--data|--data-raw)\s", command):
                commands += 1
                assert "-H 'Content-Type: application/json'" in command, command
    assert commands >= 5


# -- nginx in front, as the doc configures it ------------------------------------------------


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


@dataclass
class Proxy:
    """nginx on https://127.0.0.1:port in front of server, answering for the doc's public name."""

    port: int
    name: str  # the doc's server_name: clients send it as Host
    ca: Path
    server: LiveServer
    dir: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", {**AUTH, "Host": self.name})
        return requests.get(self.url + path, verify=str(self.ca), timeout=30, **kwargs)

    def post(self, path: str, body: dict[str, Any], **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", {**AUTH, "Host": self.name})
        kwargs.setdefault("timeout", 30)
        return requests.post(self.url + path, json=body, verify=str(self.ca), **kwargs)

    def delete(self, path: str) -> requests.Response:
        return requests.delete(self.url + path, headers={**AUTH, "Host": self.name},
                               verify=str(self.ca), timeout=30)

    def channels(self, kernel_id: str, **options: Any) -> websocket.WebSocket:
        """A channels WebSocket through nginx, as a client of https://<name>/ opens it."""
        options = {"header": {"Authorization": f"token {TOKEN}"}, "host": self.name,
                   "origin": f"https://{self.name}", **options}
        return websocket.create_connection(
            f"wss://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels", timeout=30,
            sslopt={"ca_certs": str(self.ca)}, **options)


def nginx_config(tmp: Path, port: int, upstream: int, cert: Path, key: Path) -> str:
    """nginx.conf for the test: the doc's block inside an http block, every path in tmp."""
    block = substitute(doc_block("nginx config"),
                       ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
                       ("/etc/ssl/compute.pem", str(cert)), ("/etc/ssl/compute.key", str(key)),
                       ("proxy_pass http://127.0.0.1:5000;", f"proxy_pass http://127.0.0.1:{upstream};"))
    temp = "\n".join(f"    {kind}_temp_path {tmp / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # One process (no workers to orphan, no user to switch to), in the foreground.
    return f"""daemon off;
master_process off;
pid {tmp / "nginx.pid"};
error_log {tmp / "error.log"} info;
events {{ worker_connections 128; }}
http {{
    # Only the doc's `proxy_buffering off` may keep streams live, not the server's header.
    proxy_ignore_headers X-Accel-Buffering;
    log_format seen '$request $status host=$http_host origin=$http_origin';
    access_log {tmp / "access.log"} seen;
{temp}
{block}
}}
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    nginx = nginx_binary()
    if nginx is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx; .ci/run does)")
    tmp = tmp_path_factory.mktemp("proxy")
    name = re.findall(r"^\s*server_name (\S+);", doc_block("nginx config"), re.M)[0]
    ca = trustme.CA()
    issued = ca.issue_cert(name, "127.0.0.1")
    cert, key, ca_file = tmp / "cert.pem", tmp / "key.pem", tmp / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    # The server as the doc starts it: its flags, loopback (the default bind), a token.
    server = start_server(tmp, *args_after(doc_block("serve behind the proxy"), "kernelserver serve"))
    nginx_proc = None
    try:
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_config(tmp, port, int(server.url.rsplit(":", 1)[1]), cert, key))
        log = tmp / "error.log"
        nginx_proc = subprocess.Popen([nginx, "-p", str(tmp), "-c", str(conf), "-e", str(log)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def listening() -> bool:
            if nginx_proc.poll() is not None:
                return True
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        assert wait_until(listening, 20) and nginx_proc.poll() is None, \
            f"nginx did not start:\n{log.read_text() if log.exists() else ''}\n{conf.read_text()}"
        yield Proxy(port, name, ca_file, server, tmp)
    finally:
        if nginx_proc is not None:
            stop(nginx_proc, timeout=10)
        server.stop()


def test_v1_execute_through_the_proxy_with_the_token_and_the_public_name(proxy: Proxy) -> None:
    answer = proxy.post("/execute", {"code": "x = 6\nx * 7"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"] == {"text/plain": "42"}
    assert proxy.get("/health", headers={"Host": proxy.name}).ok
    # Nothing loosened: the token is still required, and the Host check still refuses other names.
    refused = proxy.post("/execute", {"code": "1"}, headers={"Host": proxy.name})
    assert refused.status_code == 401
    rebinding = proxy.post("/execute", {"code": "1"}, headers={**AUTH, "Host": "attacker.example"})
    assert rebinding.status_code == 403 and "not allowed" in rebinding.text


def test_a_streamed_cell_arrives_line_by_line_through_the_proxy(proxy: Proxy) -> None:
    """The first line comes while the cell still runs: the cell waits for a file this test makes
    only once that line is here, so a buffering proxy would leave the read to time out."""
    go = proxy.dir / f"go-{uuid.uuid4().hex}"
    code = (f"import os, time\nprint('first', flush=True)\ndeadline = time.monotonic() + 30\n"
            f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
            f"    time.sleep(0.01)\nprint('released' if os.path.exists({str(go)!r}) else 'timed out')")
    assert proxy.post("/env/create", {"id": "stream"}).ok  # its own: a failure blocks no other test
    with proxy.post("/execute", {"id": "stream", "code": code, "stream": True}, stream=True,
                    timeout=(10, 10)) as answer:
        assert answer.status_code == 200, answer.text
        lines = answer.iter_lines(chunk_size=None)
        events = []
        for line in lines:
            if line:
                events.append(json.loads(line))
                if events[-1].get("event") == "stdout":
                    break
        assert events[-1] == {"event": "stdout", "text": "first\n"}, events
        assert not [e for e in events if e.get("event") == "result"]  # the cell is still running
        go.touch()
        rest = [json.loads(line) for line in lines if line]
    assert {"event": "stdout", "text": "released\n"} in rest, rest
    assert rest[-1]["event"] == "result" and rest[-1]["status"] == "ok", rest[-1]


def run_cell(ws: websocket.WebSocket, code: str) -> list[dict[str, Any]]:
    """Send an execute_request on a legacy (JSON) channels socket; everything up to its idle."""
    header = {"msg_id": uuid.uuid4().hex, "msg_type": "execute_request", "session": uuid.uuid4().hex,
              "username": "test", "version": "5.3"}
    ws.send(json.dumps({"channel": "shell", "header": header, "parent_header": {}, "metadata": {},
                        "content": {"code": code, "silent": False}}))
    seen = []
    while True:
        message = json.loads(ws.recv())
        if message["parent_header"].get("msg_id") != header["msg_id"]:
            continue
        seen.append(message)
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            return seen


def test_jupyter_channels_through_the_proxy_with_the_public_origin(proxy: Proxy) -> None:
    started = proxy.post("/api/kernels", {"name": "python3"},
                         headers={"Authorization": f"token {TOKEN}", "Host": proxy.name})
    assert started.status_code == 201, started.text
    kernel = started.json()["id"]
    try:
        # Origin https://compute.example.org, Host compute.example.org: what a browser page or a
        # script of the public URL sends through the proxy.
        ws = proxy.channels(kernel)
        try:
            seen = run_cell(ws, "1+1")
        finally:
            ws.close()
        assert of_type(seen, "execute_result")[0]["content"]["data"] == {"text/plain": "2"}
        assert of_type(seen, "execute_reply")[0]["content"]["status"] == "ok"
        # websocket-client's own Origin (the README's CI script sends it) for the URL it was given.
        ws = proxy.channels(kernel, host=None, origin=None)
        try:
            assert of_type(run_cell(ws, "3*3"), "execute_result")[0]["content"]["data"] == {
                "text/plain": "9"}
        finally:
            ws.close()
    finally:
        proxy.delete(f"/api/kernels/{kernel}")


def test_a_foreign_origin_is_still_refused_through_the_proxy(proxy: Proxy) -> None:
    kernel = proxy.post("/api/kernels", {"name": "python3"}).json()["id"]
    try:
        for origin in ("https://attacker.example", f"https://{proxy.name}.attacker.example",
                       "http://127.0.0.1:8888"):
            with pytest.raises(websocket.WebSocketBadStatusException) as refused:
                proxy.channels(kernel, origin=origin)
            assert refused.value.status_code == 403, origin
        # And without the token, whatever the Origin.
        with pytest.raises(websocket.WebSocketBadStatusException) as no_token:
            proxy.channels(kernel, header={})
        assert no_token.value.status_code == 401
    finally:
        proxy.delete(f"/api/kernels/{kernel}")


def shell_env(server: LiveServer, **extra: str) -> dict[str, str]:
    """A reader's shell: kernelserver on PATH, the server's data dir and token exported."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "KERNELSERVER_DATA_DIR": str(server.data_dir), "KERNELSERVER_TOKEN": server.token, **extra}
    env.pop("KERNELSERVER_URL", None)
    return env


def run_sh(body: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", body], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{body}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert '"error"' not in done.stdout.replace('"error":null', "").replace('"error": null', ""), \
        done.stdout
    return done


def test_the_docs_curl_examples_run_through_the_proxy(proxy: Proxy, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (.ci/run installs it)")
    public = f"https://{proxy.name}"
    body = doc_block("through the proxy").replace(public, f"{public}:{proxy.port}")
    # The reader's DNS and CA: the public name is this nginx, and its certificate is trusted.
    prelude = (f"curl() {{ command curl --resolve {proxy.name}:{proxy.port}:127.0.0.1 "
               f"--cacert {shlex.quote(str(proxy.ca))} \"$@\"; }}\n")
    done = run_sh(prelude + body, shell_env(proxy.server), tmp_path)
    lines = done.stdout.replace("}{", "}\n{").splitlines()
    assert json.loads(lines[0])["status"] == "ok"  # /health
    assert json.loads(lines[1])["result"] == {"text/plain": "42"}
    events = [json.loads(line) for line in lines[2:]]
    assert [e["text"] for e in events if e["event"] == "stdout"] == ["0\n", "1\n", "2\n"]
    assert events[-1]["event"] == "result" and events[-1]["status"] == "ok"


def test_the_readmes_ci_script_runs_through_the_proxy(proxy: Proxy, tmp_path: Path) -> None:
    """As written: websocket-client sends its own Origin, the proxy's URL."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- jupyter-ci-script -->")[1].split("<!-- /jupyter-ci-script -->")[0]
    script = tmp_path / "ci_check.py"
    script.write_text(block.split("```python\n", 1)[1].rsplit("```", 1)[0])
    env = {**os.environ, "KERNELSERVER_URL": proxy.url, "KERNELSERVER_TOKEN": TOKEN,
           "REQUESTS_CA_BUNDLE": str(proxy.ca), "WEBSOCKET_CLIENT_CA_BUNDLE": str(proxy.ca)}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "environment check: passed" in done.stdout


def test_jupyterlabs_gateway_client_runs_cells_through_the_proxy(proxy: Proxy, tmp_path: Path) -> None:
    """jupyter_server with the doc's `jupyter lab` flags (JupyterLab's server and gateway client):
    it sends the public Host, the token, and no Origin."""
    lab_line = [b.body for b in doc_blocks() if b.body.startswith("jupyter lab --gateway-url")]
    assert len(lab_line) == 1
    args = args_after(lab_line[0], "jupyter lab")
    assert args == [f"--gateway-url=https://{proxy.name}", "--GatewayClient.auth_token=$KERNELSERVER_TOKEN"]
    # The doc's flags; this machine reaches the public name at nginx's address. The doc's way
    # to trust a private CA (GatewayClient.ca_certs needs a client certificate).
    with jupyter_gateway(tmp_path, proxy.url, TOKEN, "lab-token",
                         f"--GatewayClient.headers={json.dumps({'Host': proxy.name})}",
                         env={"SSL_CERT_FILE": str(proxy.ca)}) as url:
        lab = {"Authorization": "token lab-token"}
        started = requests.post(url + "/api/kernels", json={"name": "python3"}, headers=lab, timeout=60)
        assert started.status_code == 201, started.text + (tmp_path / "jupyter_server.log").read_text()
        kernel = started.json()["id"]
        client = KernelClient(url, kernel, "lab-token")
        try:
            reply, seen = client.execute("1+1")
        finally:
            client.close()
        assert reply["content"]["status"] == "ok", reply
        assert of_type(seen, "execute_result")[0]["content"]["data"] == {"text/plain": "2"}
        assert requests.delete(f"{url}/api/kernels/{kernel}", headers=lab, timeout=30).status_code == 204
    # Through nginx, with the public name as Host and no Origin.
    logged = [line for line in (proxy.dir / "access.log").read_text().splitlines()
              if f"/api/kernels/{kernel}/channels" in line]
    assert logged and logged[0].endswith(f" 101 host={proxy.name} origin=-"), logged

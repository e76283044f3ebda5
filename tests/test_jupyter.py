"""The Jupyter kernel API against a real server: REST, and the channels WebSocket in both formats."""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from helpers import LiveServer, start_server, wait_until
from jupyter_ws import KernelClient, of_type, ws_url

pytestmark = pytest.mark.slow

DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the module: pings every second, reprs up to 20 MB (a 16 MiB display)."""
    live = start_server(tmp_path_factory.mktemp("jupyter"), env={
        "KERNELSERVER_WEBSOCKET_PING_INTERVAL": "1", "KERNELSERVER_REPR_LIMIT_BYTES": "20000000"})
    yield live
    live.stop()


def rest(server: LiveServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("headers", {"Authorization": f"token {server.token}"})
    return requests.request(method, server.url + path, timeout=30, **kwargs)


def new_kernel(server: LiveServer) -> str:
    response = rest(server, "POST", "/api/kernels", json={"name": "python3"})
    assert response.status_code == 201, response.text
    kernel_id: str = response.json()["id"]
    return kernel_id


@pytest.fixture
def kernel(server: LiveServer) -> Iterator[str]:
    kernel_id = new_kernel(server)
    yield kernel_id
    rest(server, "DELETE", f"/api/kernels/{kernel_id}")


_opened: list[KernelClient] = []


@pytest.fixture(autouse=True)
def _close_every_connection() -> Iterator[None]:
    """Every connection a test opens is closed when it ends, whether it passed or failed."""
    yield
    while _opened:
        client = _opened.pop()
        try:
            client.ws.close(timeout=1)
        except Exception:  # noqa: BLE001 - already closed or broken: drop the socket anyway
            client.ws.shutdown()


def connect(server: LiveServer, kernel_id: str, **kwargs: Any) -> KernelClient:
    client = KernelClient(server.url, kernel_id, server.token, **kwargs)
    _opened.append(client)
    return client


# -- REST --

def test_rest_api_answers_as_jupyter_server(server: LiveServer) -> None:
    assert rest(server, "GET", "/api", headers={}).json().keys() == {"version"}
    specs = rest(server, "GET", "/api/kernelspecs").json()
    assert specs["default"] == "python3"
    spec = specs["kernelspecs"]["python3"]
    assert spec["name"] == "python3" and spec["resources"] == {} and spec["spec"]["language"] == "python"
    assert "kernelserver" in spec["spec"]["display_name"] and isinstance(spec["spec"]["argv"], list)
    assert rest(server, "GET", "/api/kernelspecs/python3").json() == spec
    missing = rest(server, "GET", "/kernelspecs/python3/logo-64x64.png")
    assert missing.status_code == 404 and set(missing.json()) >= {"message", "reason"}
    # A start as JupyterLab sends it: JSON as text/plain, a cache-buster in the query.
    started = rest(server, "POST", "/api/kernels?1796031708554", data=json.dumps({"name": "python3"}),
                   headers={"Authorization": f"token {server.token}",
                            "Content-Type": "text/plain;charset=UTF-8"})
    assert started.status_code == 201 and started.headers["Location"].endswith(started.json()["id"])
    model = started.json()
    kernel_id = model["id"]
    assert re.fullmatch(r"\w+-\w+-\w+-\w+-\w+", kernel_id)  # jupyter_server's route pattern
    assert model["name"] == "python3" and model["execution_state"] == "idle"
    assert model["connections"] == 0 and DATE.match(model["last_activity"])
    assert kernel_id in [k["id"] for k in rest(server, "GET", "/api/kernels?123").json()]
    assert rest(server, "GET", f"/api/kernels/{kernel_id}").json()["id"] == kernel_id
    assert rest(server, "POST", f"/api/kernels/{kernel_id}/interrupt", json={}).status_code == 204
    restarted = rest(server, "POST", f"/api/kernels/{kernel_id}/restart", json={})
    assert restarted.status_code == 200 and restarted.json()["id"] == kernel_id
    assert rest(server, "DELETE", f"/api/kernels/{kernel_id}").status_code == 204
    gone = rest(server, "GET", f"/api/kernels/{kernel_id}")
    assert gone.status_code == 404 and gone.json()["reason"] == "Not Found"
    assert rest(server, "DELETE", f"/api/kernels/{kernel_id}").status_code == 404


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("POST", "/api/kernels", {"data": "{not json"}, 400),
    ("POST", "/api/kernels", {"json": ["python3"]}, 400),
    ("POST", "/api/kernels", {"json": {"name": "julia"}}, 404),
    ("POST", "/api/kernels", {"json": {"name": "python3", "env": "x"}}, 400),
    ("GET", "/api/kernelspecs/nope", {}, 404),
    ("POST", "/api/kernels/ghost/restart", {}, 404),
    ("GET", "/api/kernels/bad%20id", {}, 400),
], ids=["bad-json", "not-an-object", "unknown-spec", "bad-env", "unknown-spec-get", "ghost-restart",
        "bad-id"])
def test_bad_rest_requests_get_jupyters_error_shape(server: LiveServer, method: str, path: str,
                                                     kwargs: dict[str, Any], status: int) -> None:
    response = rest(server, method, path, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["message"], str) and body["message"] and isinstance(body["reason"], str)
    assert "Traceback" not in response.text


def test_auth_takes_token_or_bearer_and_query_token_only_on_upgrades(server: LiveServer,
                                                                     kernel: str) -> None:
    assert rest(server, "GET", "/api/kernels", headers={}).status_code == 401
    assert rest(server, "GET", "/api/kernels",
                headers={"Authorization": f"Bearer {server.token}"}).status_code == 200
    assert rest(server, "GET", "/api/kernels", headers={"Authorization": "token wrong"}).status_code == 401
    assert rest(server, "GET", f"/api/kernels?token={server.token}", headers={}).status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url(server.url, kernel), timeout=10)
    assert refused.value.status_code == 401
    ws = websocket.create_connection(ws_url(server.url, kernel, token=server.token), timeout=10)
    try:
        assert ws.connected
    finally:
        ws.close()
    assert server.token not in server.output()  # the URL that carried it is not logged


@pytest.mark.parametrize(("origin", "allowed"), [
    ("http://evil.example", False), ("null", False), (None, True), ("same", True),
], ids=["other-site", "null", "no-origin", "same-origin"])
def test_websocket_origin_check(server: LiveServer, kernel: str, origin: str | None,
                                allowed: bool) -> None:
    shown = server.url if origin == "same" else origin
    headers = {"Origin": shown} if shown else {}
    if allowed:
        connect(server, kernel, headers=headers).close()
        return
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(server, kernel, headers=headers)
    assert refused.value.status_code == 403


def test_a_kernel_is_a_namespace(server: LiveServer, kernel: str) -> None:
    bearer = {"Authorization": f"Bearer {server.token}"}
    assert kernel in [e["id"] for e in requests.get(server.url + "/env/list", headers=bearer,
                                                     timeout=10).json()["envs"]]
    requests.post(server.url + "/execute", json={"id": kernel, "code": "shared = 42"},
                  headers=bearer, timeout=30)
    client = connect(server, kernel)
    reply, seen = client.execute("shared + 1")
    assert of_type(seen, "execute_result")[0]["content"]["data"] == {"text/plain": "43"}
    client.close()
    # And a namespace made over HTTP is a kernel.
    requests.post(server.url + "/env/create", json={"id": "made-over-http"}, headers=bearer, timeout=30)
    models = {k["id"]: k for k in rest(server, "GET", "/api/kernels").json()}
    assert models["made-over-http"]["execution_state"] == "idle"
    requests.post(server.url + "/env/delete", json={"id": "made-over-http"}, headers=bearer, timeout=30)


def close_code(client: KernelClient, timeout: float = 10) -> int:
    """Read until the server's close frame; its code (the client's socket is closed after)."""
    client.ws.settimeout(timeout)
    try:
        while True:
            opcode, data = client.ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return int.from_bytes(data[:2], "big")
    finally:
        client.ws.shutdown()


# -- the channels --

@pytest.mark.parametrize("v1", [False, True], ids=["legacy-json", "v1-binary"])
def test_execute_sequence(server: LiveServer, kernel: str, v1: bool) -> None:
    client = connect(server, kernel, v1=v1)
    assert client.subprotocol == ("v1.kernel.websocket.jupyter.org" if v1 else None)
    reply, seen = client.request("kernel_info_request")
    assert reply["content"]["status"] == "ok" and reply["content"]["protocol_version"] == "5.3"
    assert reply["content"]["language_info"]["name"] == "python"
    reply, seen = client.execute("import sys\nprint('hello')\nsys.stderr.write('warn\\n')\n6 * 7")
    header_id = reply["parent_header"]["msg_id"]
    kinds = [(m["channel"], m["msg_type"]) for m in seen]
    assert kinds[0] == ("iopub", "status") and seen[0]["content"]["execution_state"] == "busy"
    assert ("iopub", "execute_input") in kinds and kinds[-1] == ("iopub", "status")
    assert kinds.index(("shell", "execute_reply")) < len(kinds) - 1  # the reply comes before idle
    streams = {m["content"]["name"]: m["content"]["text"] for m in of_type(seen, "stream")}
    assert streams == {"stdout": "hello\n", "stderr": "warn\n"}
    result = of_type(seen, "execute_result")[0]["content"]
    assert result["data"] == {"text/plain": "42"}
    assert result["execution_count"] == reply["content"]["execution_count"]
    assert reply["content"]["status"] == "ok" and reply["content"]["user_expressions"] == {}
    for message in seen:
        assert message["parent_header"]["msg_id"] == header_id
        header = message["header"]
        assert all(isinstance(header[k], str) for k in ("msg_id", "msg_type", "session", "username",
                                                        "version"))
        assert DATE.match(header["date"])
    assert len({m["header"]["session"] for m in seen}) == 1  # one kernel session
    client.close()


def test_errors_come_as_jupyter_errors(server: LiveServer, kernel: str) -> None:
    client = connect(server, kernel)
    reply, seen = client.execute("def f():\n    return 1 / 0\nprint('before')\nf()")
    content = reply["content"]
    assert content["status"] == "error" and content["ename"] == "ZeroDivisionError"
    assert isinstance(content["traceback"], list) and any("1 / 0" in line for line in content["traceback"])
    error = of_type(seen, "error")[0]["content"]
    assert error["ename"] == "ZeroDivisionError" and error["traceback"] == content["traceback"]
    assert of_type(seen, "stream")[0]["content"]["text"] == "before\n"
    client.close()


def test_kernel_info_is_answered_at_once_while_a_cell_runs(server: LiveServer, kernel: str) -> None:
    client = connect(server, kernel)
    cell = client.send("execute_request", {"code": "import time\ntime.sleep(3)\n'slept'"})
    client.until(lambda m: m["msg_type"] == "execute_input")
    reply, seen = client.request("kernel_info_request")
    assert reply["content"]["status"] == "ok"
    # Answered while the cell sleeps, not after it: nothing of the cell's end came before the
    # reply, and the reply is followed by busy again, the cell still running.
    assert not [m for m in seen if m["parent_header"].get("msg_id") == cell["msg_id"]
                and m["msg_type"] == "execute_reply"], seen
    last = client.recv()
    assert last["msg_type"] == "status" and last["content"]["execution_state"] == "busy"
    assert last["parent_header"]["msg_id"] == cell["msg_id"]
    client.until_idle(cell["msg_id"])
    client.close()


def test_side_requests(server: LiveServer, kernel: str) -> None:
    client = connect(server, kernel)
    client.execute("import os\nsome_value = 3\ndef helper(x):\n    'Doubles x.'\n    return 2 * x")
    reply, _ = client.request("complete_request", {"code": "some_v", "cursor_pos": 6})
    assert reply["content"]["matches"] == ["some_value"] and reply["content"]["cursor_start"] == 0
    reply, _ = client.request("inspect_request", {"code": "helper(2)", "cursor_pos": 2, "detail_level": 0})
    assert reply["content"]["found"] and "Doubles x." in reply["content"]["data"]["text/plain"]
    reply, _ = client.request("is_complete_request", {"code": "for i in range(3):"})
    assert reply["content"] == {"status": "incomplete", "indent": "    "}
    reply, _ = client.request("history_request", {"hist_access_type": "tail", "n": 1, "output": False,
                                                  "raw": True})
    assert reply["content"]["history"][0][2].startswith("import os")
    reply, _ = client.request("comm_info_request")
    assert reply["content"] == {"status": "ok", "comms": {}}
    reply, seen = client.request("no_such_request")
    assert reply["msg_type"] == "no_such_reply" and reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "UnknownMessageType"
    client.close()


def test_malformed_frames_get_an_error_and_the_connection_lives(server: LiveServer, kernel: str) -> None:
    client = connect(server, kernel)
    for frame, why in (("{not json", "not valid JSON"), ('["a list"]', "JSON object"),
                       ('{"header": {}}', "no msg_type"),
                       ('{"channel": "nowhere", "header": {"msg_type": "kernel_info_request"}}',
                        "unknown channel"), (b"\x00\x01", "too short")):
        client.send_raw(frame)
        error = client.recv()
        assert error["msg_type"] == "error" and error["content"]["ename"] == "BadMessage"
        assert why in error["content"]["evalue"]
    reply, _ = client.execute("'still here'")
    assert reply["content"]["status"] == "ok"
    client.close()


def test_interrupt_on_control_and_over_rest(server: LiveServer, kernel: str) -> None:
    client = connect(server, kernel)
    cell = client.send("execute_request", {"code": "while True:\n    pass"})
    client.until(lambda m: m["msg_type"] == "execute_input")
    reply, _ = client.request("interrupt_request", channel="control")
    assert reply["content"]["status"] == "ok"
    seen = client.until_idle(cell["msg_id"])
    assert of_type(seen, "execute_reply")[0]["content"]["ename"] == "KeyboardInterrupt"
    cell = client.send("execute_request", {"code": "import time\ntime.sleep(30)"})
    client.until(lambda m: m["msg_type"] == "execute_input")
    assert rest(server, "POST", f"/api/kernels/{kernel}/interrupt").status_code == 204
    seen = client.until_idle(cell["msg_id"])
    assert of_type(seen, "execute_reply")[0]["content"]["ename"] == "KeyboardInterrupt"
    client.close()


def test_silent_user_expressions_and_stop_on_error(server: LiveServer, kernel: str) -> None:
    client = connect(server, kernel)
    reply, seen = client.execute("x = 5\nprint('quiet')\nx", silent=True)
    assert reply["content"]["status"] == "ok"
    assert [m["msg_type"] for m in seen if m["channel"] == "iopub"] == ["status", "status"]
    reply, _ = client.execute("y = x + 1", user_expressions={"both": "(x, y)", "bad": "nope"})
    found = reply["content"]["user_expressions"]
    assert found["both"] == {"status": "ok", "data": {"text/plain": "(5, 6)"}, "metadata": {}}
    assert found["bad"]["status"] == "error" and found["bad"]["ename"] == "NameError"
    # Without stop_on_error the cell queued behind a failing one runs.
    failing = client.send("execute_request", {"code": "1/0", "stop_on_error": False})
    queued = client.send("execute_request", {"code": "kept_going = 1"})
    seen = client.until_idle(queued["msg_id"])
    replies = {m["parent_header"]["msg_id"]: m["content"]["status"] for m in of_type(seen, "execute_reply")}
    assert replies == {failing["msg_id"]: "error", queued["msg_id"]: "ok"}
    client.close()


def test_stop_on_error_aborts_the_cells_queued_behind(server: LiveServer, kernel: str) -> None:
    client = connect(server, kernel)
    failing = client.send("execute_request", {"code": "import time\ntime.sleep(0.5)\n1/0"})
    queued = client.send("execute_request", {"code": "never = 1"})
    seen = client.until_idle(queued["msg_id"])
    replies = {m["parent_header"]["msg_id"]: m["content"] for m in of_type(seen, "execute_reply")}
    assert replies[failing["msg_id"]]["status"] == "error"
    assert replies[queued["msg_id"]] == {"status": "aborted"}
    assert not [m for m in of_type(seen, "execute_input") if m["parent_header"]["msg_id"] == queued["msg_id"]]
    reply, _ = client.execute("'never' in globals()")
    assert reply["content"]["status"] == "ok"
    client.close()


@pytest.mark.parametrize("v1", [False, True], ids=["legacy-json", "v1-binary"])
def test_input_over_stdin(server: LiveServer, kernel: str, v1: bool) -> None:
    client = connect(server, kernel, v1=v1)
    cell = client.send("execute_request", {"code": "name = input('Name? ')\nprint('hi', name)",
                                           "allow_stdin": True})
    request = client.until(lambda m: m["msg_type"] == "input_request")[-1]
    assert request["channel"] == "stdin" and request["content"] == {"prompt": "Name? ", "password": False}
    assert request["parent_header"]["msg_id"] == cell["msg_id"]
    client.send("input_reply", {"value": "Ada"}, channel="stdin", parent=request["header"])
    seen = client.until_idle(cell["msg_id"])
    assert [m["content"]["text"] for m in of_type(seen, "stream")] == ["hi Ada\n"]
    reply, _ = client.execute("input('no stdin here')", allow_stdin=False)
    assert reply["content"]["ename"] == "StdinNotImplementedError"
    client.close()


def test_many_clients_see_every_cell_only_the_sender_gets_the_reply(server: LiveServer, kernel: str) -> None:
    first, second = connect(server, kernel), connect(server, kernel)
    assert rest(server, "GET", f"/api/kernels/{kernel}").json()["connections"] == 2
    cell = first.send("execute_request", {"code": "print('to everyone')"})
    mine = first.until_idle(cell["msg_id"])
    theirs = second.until_idle(cell["msg_id"])
    assert [m["content"]["text"] for m in of_type(theirs, "stream")] == ["to everyone\n"]
    assert of_type(mine, "execute_reply") and not of_type(theirs, "execute_reply")
    # A cell sent over plain HTTP shows on every connection too.
    requests.post(server.url + "/execute", json={"id": kernel, "code": "print('over http')"},
                  headers={"Authorization": f"Bearer {server.token}"}, timeout=30)
    for client in (first, second):
        seen = client.until(lambda m: m["msg_type"] == "status"
                            and m["content"]["execution_state"] == "idle")
        assert [m["content"]["text"] for m in of_type(seen, "stream")] == ["over http\n"]
        assert of_type(seen, "execute_input")[0]["parent_header"]["session"] == "kernelserver-http"
    first.close()
    second.close()


def test_a_client_that_comes_back_gets_what_it_missed(server: LiveServer, kernel: str) -> None:
    client = connect(server, kernel, session="come-back")
    code = "import time\nfor i in range(6):\n    print('line', i, flush=True)\n    time.sleep(0.3)\n'done'"
    cell = client.send("execute_request", {"code": code})
    client.until(lambda m: m["msg_type"] == "stream")
    client.ws.sock.close()  # the laptop sleeps: no goodbye
    # it stays away until the cell has finished: everything after 'line 0' is missed output
    assert wait_until(lambda: requests.get(
        server.url + "/env/history", params={"id": kernel, "limit": 1}, headers=server.headers,
        timeout=10).json()["executions"][-1]["status"] == "ok", 20)
    again = connect(server, kernel, session="come-back")
    seen = again.until_idle(cell["msg_id"])
    text = "".join(m["content"]["text"] for m in of_type(seen, "stream"))
    assert "line 5" in text
    assert of_type(seen, "execute_reply")[0]["content"]["status"] == "ok"
    assert of_type(seen, "execute_result")[0]["content"]["data"] == {"text/plain": "'done'"}
    again.close()


def test_pings_keep_a_socket_alive_through_a_blocking_cell(server: LiveServer, kernel: str) -> None:
    client = connect(server, kernel)
    cell = client.send("execute_request", {"code": "import time\ntime.sleep(3.5)\n'awake'"})
    pings = 0
    deadline = time.monotonic() + 20
    done = False
    while not done and time.monotonic() < deadline:
        client.ws.settimeout(10)
        opcode, data = client.ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_PING:
            pings += 1  # websocket-client answered it already
        elif opcode == websocket.ABNF.OPCODE_TEXT:
            message = json.loads(data)
            done = (message["msg_type"] == "status" and message["content"]["execution_state"] == "idle"
                    and message["parent_header"]["msg_id"] == cell["msg_id"])
    assert done and pings >= 2
    client.close()


def test_a_vanished_peer_is_dropped(server: LiveServer, kernel: str) -> None:
    # Handshake by hand, then never read or answer a ping: a laptop that left the network.
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET /api/kernels/{kernel}/channels HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     f"Authorization: token {server.token}\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        assert b"101" in sock.recv(4096).split(b"\r\n")[0]
        model = lambda: rest(server, "GET", f"/api/kernels/{kernel}").json()  # noqa: E731

        def counted_while_answering_pings() -> bool:
            # Alive until it is seen counted, however slow this machine is to look.
            sock.settimeout(0.05)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                data = b""
            while len(data) >= 2:  # the server's frames (unmasked), whole within one read
                size, head = data[1] & 0x7F, 2
                if size >= 126:
                    head = 4 if size == 126 else 10
                    size = int.from_bytes(data[2:head], "big")
                if data[0] & 0x0F == 0x9:  # ping (payload < 126): a pong with it, zero mask
                    sock.sendall(bytes([0x8A, 0x80 | size]) + b"\0\0\0\0" + data[head:head + size])
                data = data[head + size:]
            return bool(model()["connections"] == 1)

        assert wait_until(counted_while_answering_pings, 20)
        # Then never read or answer again: dropped within two ping intervals and a bit.
        assert wait_until(lambda: model()["connections"] == 0, 10)


def test_a_16_mib_display_arrives_whole(server: LiveServer, kernel: str) -> None:
    client = connect(server, kernel, v1=True)
    payload = base64.b64encode(bytes(range(256)) * (12 * 4096 + 1)).decode()[:16 << 20]
    reply, seen = client.execute("import base64\n"
                                 "data = base64.b64encode(bytes(range(256)) * (12 * 4096 + 1)).decode()"
                                 "[:16 << 20]\ndisplay({'image/png': data}, raw=True)")
    shown = of_type(seen, "display_data")[0]["content"]["data"]["image/png"]
    assert len(shown) == 16 << 20 and shown == payload
    client.close()


def test_shutdown_request(server: LiveServer) -> None:
    kernel = new_kernel(server)
    client = connect(server, kernel)
    client.execute("kept = 1")
    reply, seen = client.request("shutdown_request", {"restart": True}, channel="control")
    assert reply["content"] == {"status": "ok", "restart": True}
    again = connect(server, kernel)
    reply, _ = again.execute("kept")
    assert reply["content"]["ename"] == "NameError", reply["content"]  # restarted empty
    again.close()
    client.close()
    client = connect(server, kernel)
    reply, _ = client.request("shutdown_request", {"restart": False}, channel="control")
    assert reply["content"] == {"status": "ok", "restart": False}
    client.until(lambda m: m["msg_type"] == "status" and m["content"]["execution_state"] == "dead")
    assert close_code(client) == 1000  # a kernel that is gone: clients do not reconnect
    assert rest(server, "GET", f"/api/kernels/{kernel}").status_code == 404


def statuses(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"]["execution_state"] for m in messages
            if m["channel"] == "iopub" and m["msg_type"] == "status"]


def kernel_idle(message: dict[str, Any]) -> bool:
    """The idle of the kernel itself (no parent): a new kernel is up."""
    return (message["msg_type"] == "status" and not message["parent_header"]
            and message["content"]["execution_state"] == "idle")


@pytest.mark.parametrize("how", ["control", "rest"])
def test_a_requested_restart_is_no_crash(server: LiveServer, kernel: str, how: str) -> None:
    # JupyterLab shows "The kernel appears to have died" on status `restarting`: as with
    # ipykernel under jupyter_server, a restart asked for says shutdown_reply, then starting.
    client = connect(server, kernel)
    reply, _ = client.execute("kept = 1")
    old_session = reply["header"]["session"]
    if how == "control":
        request = client.send("shutdown_request", {"restart": True}, channel="control")
        seen = client.until(kernel_idle)
        assert of_type(seen, "shutdown_reply")[0]["channel"] == "control"
        parent = {"msg_id": request["msg_id"]}
    else:
        # A cell deaf to interrupts: the restart kills its worker (an exit asked for, no crash).
        cell = client.send("execute_request", {"code": "import signal, time\n"
                                               "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                               "print('deaf', flush=True)\ntime.sleep(30)"})
        client.until(lambda m: m["msg_type"] == "stream")
        assert rest(server, "POST", f"/api/kernels/{kernel}/restart", json={}).status_code == 200
        seen = client.until_idle(cell["msg_id"])  # it and the restart's messages, in any order
        if not any(kernel_idle(m) for m in seen):
            seen += client.until(kernel_idle)
        assert of_type(seen, "execute_reply")[0]["content"]["ename"] == "NamespaceRestarted"
        parent = {}
    assert "restarting" not in statuses(seen)
    said = [m for m in of_type(seen, "shutdown_reply") if m["channel"] == "iopub"]
    assert len(said) == 1 and said[0]["content"] == {"status": "ok", "restart": True}
    assert {k: said[0]["parent_header"][k] for k in parent} == parent
    starting = [m for m in of_type(seen, "status") if m["content"]["execution_state"] == "starting"]
    assert len(starting) == 1 and starting[0]["header"]["session"] != old_session
    assert [m for m in seen if kernel_idle(m)][0]["header"]["session"] == starting[0]["header"]["session"]
    reply, _ = client.execute("kept")
    assert reply["content"]["ename"] == "NameError"  # the same connection goes on, empty
    assert reply["header"]["session"] == starting[0]["header"]["session"]
    client.close()


def test_a_crash_looks_like_one(server: LiveServer, kernel: str) -> None:
    client = connect(server, kernel)
    client.execute("kept = 1")
    reply, seen = client.execute("import os\nos._exit(1)")
    assert reply["content"]["ename"] == "WorkerDied" and "restarting" not in statuses(seen)
    # After the cell's idle, what jupyter_server's auto-restarter says, then the new kernel.
    after = client.until(kernel_idle)
    assert statuses(after) == ["restarting", "starting", "idle"]
    assert after[0]["header"]["session"] == reply["header"]["session"]
    assert after[1]["header"]["session"] != reply["header"]["session"]
    reply, _ = client.execute("kept")
    assert reply["content"]["ename"] == "NameError"
    client.close()


def test_completion_and_inspection_as_ipykernel_answers(server: LiveServer, kernel: str) -> None:
    client = connect(server, kernel)
    client.execute("import os\ndef helper(x):\n    'Doubles x.'\n    return 2 * x")
    reply, _ = client.request("inspect_request", {"code": "helper(", "cursor_pos": 7})
    assert reply["content"]["found"] and "Doubles x." in reply["content"]["data"]["text/plain"]
    reply, _ = client.request("complete_request", {"code": "os.pa", "cursor_pos": 5})
    types = reply["content"]["metadata"]["_jupyter_types_experimental"]
    assert [t["text"] for t in types] == reply["content"]["matches"]
    kinds = {t["text"]: t["type"] for t in types}
    assert kinds["os.path"] == "module" and kinds["os.pathsep"] == "instance"
    reply, _ = client.request("complete_request", {"code": "helper(1) + hel", "cursor_pos": 15})
    types = reply["content"]["metadata"]["_jupyter_types_experimental"]
    assert {"start": 12, "end": 15, "text": "helper", "type": "function", "signature": "(x)"} in types
    # The namespace runs IPython syntax: its magics complete, and inspect to their docstrings.
    reply, _ = client.request("complete_request", {"code": "%ti", "cursor_pos": 3})
    assert {"%time", "%timeit"} <= set(reply["content"]["matches"])
    assert reply["content"]["cursor_start"] == 0
    reply, _ = client.request("inspect_request", {"code": "%timeit", "cursor_pos": 3})
    assert reply["content"]["found"]
    assert "Time execution of a Python statement" in reply["content"]["data"]["text/plain"]
    client.close()


# -- limits and shutdown, on a small server of their own --

@pytest.fixture
def small(tmp_path: Path) -> Iterator[LiveServer]:
    live = start_server(tmp_path, "--threads", "4", env={"KERNELSERVER_MAX_WEBSOCKETS": "2",
                                                         "KERNELSERVER_MAX_BODY_BYTES": "65536"})
    yield live
    live.stop()


def test_max_websockets_refuses_past_the_limit_and_http_still_answers(small: LiveServer) -> None:
    kernel = new_kernel(small)
    open_ones = [connect(small, kernel), connect(small, kernel)]
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(small, kernel)
    assert refused.value.status_code == 503
    assert b"max_websockets" in refused.value.resp_body
    # Two sockets hold two of the four threads; plain requests still get answers.
    for _ in range(5):
        assert requests.get(small.url + "/health", timeout=5).ok
    open_ones[0].close()
    assert wait_until(lambda: rest(small, "GET", f"/api/kernels/{kernel}").json()["connections"] == 1, 5)
    connect(small, kernel).close()
    open_ones[1].close()


def test_an_oversize_message_closes_with_1009(small: LiveServer) -> None:
    kernel = new_kernel(small)
    client = connect(small, kernel)
    client.send("execute_request", {"code": "x = '" + "y" * 70000 + "'"})
    assert close_code(client) == 1009
    # A fresh connection works: the kernel was not harmed.
    again = connect(small, kernel)
    reply, _ = again.execute("1")
    assert reply["content"]["status"] == "ok"
    again.close()


def test_server_shutdown_closes_sockets_with_1001(tmp_path: Path) -> None:
    live = start_server(tmp_path)
    try:
        kernel = new_kernel(live)
        client = connect(live, kernel)
        client.execute("1")
        started = time.monotonic()
        live.proc.send_signal(signal.SIGTERM)
        assert close_code(client) == 1001
        live.proc.wait(10)
        assert time.monotonic() - started < 8  # not the 15 s graceful timeout
    finally:
        live.stop()
    assert live.proc.returncode is not None


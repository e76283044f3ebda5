"""Hostile input at the HTTP edge (issue 22): JSON nested past any parser's depth, malformed
chunked bodies, and malformed requests that carry the token. Each gets a 4xx in the one error
shape and at most one log line, and the token never reaches the server's log."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from kernelserver import create_app, encoding

from helpers import AUTH, TOKEN, LiveServer, wait_until

DEPTH = 100_000
DEEP = {"list": "[" * DEPTH + "]" * DEPTH, "object": '{"a":' * DEPTH + "1" + "}" * DEPTH}
ROUTES = ["/execute", "/env/create", "/env/get", "/api/kernels"]
JSON = {**AUTH, "Content-Type": "application/json"}


def nested(depth: int) -> str:
    """A list nested depth levels: within orjson's limit (1024), past json's recursion limit."""
    return "[" * depth + "]" * depth


def error_code(path: str, body: dict[str, Any]) -> str:
    """The error code of either shape: v1's {"error": {...}}, Jupyter's {"message", "reason", "code"}."""
    if path.startswith("/api/"):
        assert set(body) == {"message", "reason", "code"}, body
        return str(body["code"])
    assert set(body) == {"error"} and body["error"]["message"].strip(), body
    return str(body["error"]["code"])


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlaskClient]:
    """One inprocess app for the test-client cases."""
    app: Flask = create_app({"backend": "inprocess", "token": TOKEN,
                             "data_dir": str(tmp_path_factory.mktemp("hostile"))})
    yield app.test_client()
    app.extensions["kernelserver"].close()


# -- JSON nested past any parser's depth --

@pytest.mark.parametrize("shape", DEEP)
@pytest.mark.parametrize("path", ROUTES)
def test_deeply_nested_json_is_400_through_the_app(client: FlaskClient, path: str,
                                                   shape: str) -> None:
    answer = client.post(path, data=DEEP[shape], headers=JSON)
    assert answer.status_code == 400, answer.get_data(as_text=True)[:300]
    assert error_code(path, answer.get_json()) == "bad_request"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_deeply_nested_json_in_other_content_types_is_400(client: FlaskClient,
                                                          content_type: str) -> None:
    # JupyterLab posts JSON as text/plain; a form body that looks like JSON is checked as JSON.
    path = "/api/kernels" if content_type == "text/plain" else "/execute"
    answer = client.post(path, data=DEEP["list"], headers={**AUTH, "Content-Type": content_type})
    assert answer.status_code == 400, answer.get_data(as_text=True)[:300]
    assert error_code(path, answer.get_json()) == "bad_request"


@pytest.fixture
def without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    """encoding.loads as where orjson refuses everything: every body takes the json fallback."""
    def refuse(raw: Any) -> Any:
        raise orjson.JSONDecodeError("refused", "", 0)

    monkeypatch.setattr(encoding.orjson, "loads", refuse)


@pytest.mark.parametrize("body", [DEEP["list"], DEEP["object"], nested(990)],
                         ids=["list", "object", "990-levels"])
@pytest.mark.parametrize("path", ROUTES)
def test_deeply_nested_json_is_400_through_the_stdlib_fallback(client: FlaskClient, path: str,
                                                               body: str, without_orjson: None
                                                               ) -> None:
    answer = client.post(path, data=body, headers=JSON)
    assert answer.status_code == 400, answer.get_data(as_text=True)[:300]
    assert error_code(path, answer.get_json()) == "bad_request"


@pytest.mark.parametrize("body", [DEEP["list"], DEEP["object"]], ids=["list", "object"])
def test_loads_refuses_deep_input_with_a_value_error(body: str) -> None:
    # A ValueError, as for any invalid JSON: every caller (HTTP bodies, WebSocket messages)
    # already turns that into a 400 or a closed socket, where a RecursionError was a 500.
    with pytest.raises(ValueError, match="nested"):
        encoding.loads(body)


@pytest.mark.parametrize("body", [DEEP["list"], DEEP["object"], nested(990)],
                         ids=["list", "object", "990-levels"])
def test_the_stdlib_fallback_refuses_deep_input_with_a_value_error(body: str,
                                                                   without_orjson: None) -> None:
    with pytest.raises(ValueError, match="nested"):
        encoding.loads(body)


@pytest.mark.parametrize(("path", "body"), [
    ("/execute", {"code": "1", "timeout": "DEEP"}),
    ("/execute", {"code": "1", "stream": "DEEP"}),
    ("/execute", {"code": "1", "output_cap_bytes": "DEEP"}),
    ("/env/create", {"id": "deep", "resources": {"num_cpus": "DEEP"}}),
    ("/api/kernels", {"name": "DEEP"}),
    ("/api/kernels", {"env": {"KERNEL_GPUS": "DEEP"}}),
], ids=["timeout", "stream", "output_cap", "resources", "kernel-name", "kernel-env"])
def test_deep_values_the_parser_accepts_are_400_not_500(client: FlaskClient, path: str,
                                                        body: dict[str, Any]) -> None:
    # orjson reads 990 levels; the message that names the wrong value must not recurse through it.
    raw = json.dumps(body).replace('"DEEP"', nested(990))
    answer = client.post(path, data=raw, headers=JSON)
    assert answer.status_code == 400, answer.get_data(as_text=True)[:300]
    assert error_code(path, answer.get_json()) == "bad_request"
    assert len(answer.get_data()) < 2000  # the value is not echoed whole


# -- against a real server --

def send_raw(server: LiveServer, raw: bytes) -> tuple[int, bytes, bytes]:
    """Send raw bytes on a fresh connection; the status, head and body of the answer (read to
    the close)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(raw)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, body


def log_after(server: LiveServer, offset: int) -> str:
    """What the server logged since offset."""
    return server.output()[offset:]


def request_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("shape", DEEP)
@pytest.mark.parametrize("path", ROUTES)
def test_deeply_nested_json_is_400_on_a_real_server(server: LiveServer, path: str,
                                                    shape: str) -> None:
    offset = len(server.output())
    answer = requests.post(server.url + path, data=DEEP[shape],
                           headers={**server.headers, "Content-Type": "application/json"},
                           timeout=30)
    assert answer.status_code == 400, answer.text[:300]
    assert error_code(path, answer.json()) == "bad_request"
    assert wait_until(lambda: f"POST {path} 400" in log_after(server, offset), 10)
    assert "Traceback" not in log_after(server, offset)


CHUNKED = {
    "size-not-hex": b"zz\r\n{}\r\n0\r\n\r\n",
    "junk-after-size": b"2 junk\r\n{}\r\n0\r\n\r\n",
    "letters-after-size": b"2xyz\r\n{}\r\n0\r\n\r\n",
    "no-crlf-after-data": b"2\r\n{}XX0\r\n\r\n",
}


@pytest.mark.slow
@pytest.mark.parametrize("body", CHUNKED.values(), ids=CHUNKED.keys())
@pytest.mark.parametrize("path", ["/execute", "/api/kernels"])
def test_a_malformed_chunked_body_is_400_and_one_log_line(server: LiveServer, path: str,
                                                          body: bytes) -> None:
    offset = len(server.output())
    status, head, payload = send_raw(server, (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode() + body)
    assert status == 400, head + payload
    assert b"application/json" in head
    assert error_code(path, json.loads(payload)) == "bad_request"
    assert wait_until(lambda: f"POST {path} 400" in log_after(server, offset), 10)
    logged = request_lines(log_after(server, offset))
    assert len(logged) == 1 and "Traceback" not in logged[0], logged


@pytest.mark.slow
def test_a_malformed_chunked_body_left_unread_gets_no_second_answer(server: LiveServer) -> None:
    # /health answers without reading the body; gunicorn finds it malformed while draining it
    # for the next request: the connection closes, with no stray 400 after the 200.
    offset = len(server.output())
    status, head, payload = send_raw(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
    assert status == 200 and payload == b'{"status":"ok"}\n', head + payload
    assert wait_until(lambda: "Invalid request" in log_after(server, offset), 10)
    logged = request_lines(log_after(server, offset))
    assert len(logged) == 2 and "GET /health 200" in logged[0], logged  # the request, the refusal


def malformed_requests(token: str) -> dict[str, bytes]:
    """Requests gunicorn or the app refuse, each carrying the token somewhere."""
    host, auth = "Host: 127.0.0.1\r\n", f"Authorization: Bearer {token}\r\n"
    json_type = "Content-Type: application/json\r\n"
    return {name: raw.encode() for name, raw in {
        "control-char-in-request-line": f"GET /x?token={token}\x01 HTTP/1.1\r\n{host}\r\n",
        "junk-in-request-line": f"GET /x?token={token} junk HTTP/1.1\r\n{host}\r\n",
        "bad-method": f"G\x01T /x?token={token} HTTP/1.1\r\n{host}\r\n",
        "bad-version": f"GET /x?token={token} HTTP/9.1\r\n{host}\r\n",
        "request-line-too-long": f"GET /x?token={token}&pad={'p' * 5000} HTTP/1.1\r\n{host}\r\n",
        "bad-header-name": f"GET /x?token={token} HTTP/1.1\r\n{host}Bad\x01Name: {token}\r\n\r\n",
        "control-char-in-authorization": f"GET /x HTTP/1.1\r\n{host}"
                                         f"Authorization: Bearer {token}\x01\r\n\r\n",
        "authorization-in-a-bad-request": f"GET /x HTTP/1.1\r\n{host}{auth}X: a\x00b\r\n\r\n",
        "folded-authorization": f"GET /x HTTP/1.1\r\n{host}Authorization: Bearer\r\n {token}\r\n\r\n",
        "token-in-expect": f"POST /x HTTP/1.1\r\n{host}Expect: {token}\r\n"
                           "Content-Length: 2\r\n\r\n{}",
        "token-in-transfer-encoding": f"POST /x HTTP/1.1\r\n{host}Transfer-Encoding: gzip, {token}\r\n\r\n",
        "token-as-chunk-size": f"POST /execute HTTP/1.1\r\n{host}{auth}{json_type}"
                               f"Transfer-Encoding: chunked\r\n\r\n{token}\r\n",
        "token-in-the-path": f"GET /{token} HTTP/1.1\r\n{host}{auth}Connection: close\r\n\r\n",
        "token-as-namespace-id": f"POST /env/get HTTP/1.1\r\n{host}{auth}{json_type}"
                                 f"Content-Length: {len(token) + 10}\r\nConnection: close\r\n\r\n"
                                 f'{{"id": "{token}"}}',
    }.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(malformed_requests(TOKEN)))
def test_the_token_never_reaches_the_log_of_a_malformed_request(server: LiveServer,
                                                                 name: str) -> None:
    offset = len(server.output())
    status, head, payload = send_raw(server, malformed_requests(server.token)[name])
    assert wait_until(lambda: request_lines(log_after(server, offset)) != [], 10)
    logged = log_after(server, offset)
    assert server.token not in logged, logged
    assert len(request_lines(logged)) == 1 and "Traceback" not in logged, logged
    # The answer: a 4xx in the one error shape (not gunicorn's HTML page), never echoing the token.
    assert 400 <= status < 500 or status == 501, head
    assert b"application/json" in head, head + payload
    if name not in ("token-in-the-path", "token-as-namespace-id"):  # a 404 names what was asked
        assert server.token.encode() not in payload, payload


def test_redaction_covers_messages_arguments_and_tracebacks() -> None:
    from kernelserver.web.requestlog import Redactor, install_log_redaction

    secret = "s3cret-Token_value-0123456789"
    previous = logging.getLogRecordFactory()
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    logger = logging.getLogger("kernelserver.test-redaction")
    cell = logging.getLogger("a-cells-own-logger")  # what a cell logs (inprocess) is its output
    handler = Collect()
    for each in (logger, cell):
        each.addHandler(handler)
        each.propagate = False
    try:
        install_log_redaction(Redactor([secret]))
        cell.warning("cell: %s", f"token={secret}")
        logger.warning("Invalid request line: %r", f"GET /x?token={secret}\x01 HTTP/1.1")
        logger.warning("header %s", "Authorization: Bearer other-token-not-known-here")
        logger.warning("query %s", "/api/kernels/k/channels?session_id=1&access_token=abc123")
        try:
            raise ValueError(f"bad value {secret!r}")
        except ValueError:
            logger.exception("failed on %s", f"/x?token={secret}")
        logger.warning(f"in the message itself: {secret}")
    finally:
        logging.setLogRecordFactory(previous)
        for each in (logger, cell):
            each.removeHandler(handler)
            each.propagate = True
    assert lines.pop(0) == f"cell: token={secret}"
    text = "\n".join(lines)
    assert secret not in text and "other-token-not-known-here" not in text
    assert "abc123" not in text and "session_id=1" in text
    assert "Traceback" in text and "ValueError: bad value" in text


def test_redactor_catches_the_token_in_its_escaped_forms() -> None:
    from kernelserver.web.requestlog import Redactor

    token = "tok'en with space/é"
    redactor = Redactor([token])
    for shown in (token, repr(token), str(token.encode()), quote(token, safe=""), quote_plus(token)):
        assert shown not in redactor.redact(f"x {shown} y"), shown
    assert redactor.redact("nothing secret") == "nothing secret"

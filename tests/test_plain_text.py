"""Plain-text streams for terminals: `curl -N -H 'Accept: text/plain'` shows output as it comes."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import requests

from helpers import LiveServer

STATUS = "--- kernelserver: "


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_with_accept_text_plain_shows_output_live_then_a_status_line(server: LiveServer) -> None:
    code = ("import sys, time\n"
            "for i in range(3):\n"
            "    sys.stderr.write(f'\\r{(i + 1) * 33}%|' + '#' * i); sys.stderr.flush(); time.sleep(0.8)\n"
            "print('done')\n"
            "6 * 7")
    began = time.monotonic()
    proc = subprocess.Popen(
        ["curl", "-sN", "-H", f"Authorization: Bearer {server.token}", "-H", "Accept: text/plain",
         "--data-urlencode", f"code={code}", server.url + "/execute"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.read1(4096)  # type: ignore[attr-defined]
    first_at = time.monotonic() - began
    rest, _ = proc.communicate(timeout=30)
    ended_at = time.monotonic() - began
    body = (first + rest).decode()
    assert proc.returncode == 0
    # live, not at the end: the first bar came while the cell still had its 2.4 s of sleeps ahead
    assert first.startswith(b"\r33%|") and ended_at - first_at > 1.5, (first, first_at, ended_at)
    assert "\r33%|\r66%|#\r99%|##done\n42\n" in body
    assert body.splitlines()[-1].startswith(STATUS + "status=ok execution_count=")
    assert "duration_ms=" in body.splitlines()[-1] and body.endswith("\n")


@pytest.mark.slow
def test_stream_text_in_json_gives_the_traceback_and_the_error_in_the_status(server: LiveServer) -> None:
    answer = requests.post(server.url + "/execute", headers=server.headers, timeout=30,
                           json={"id": "default", "code": "print('before', end='')\n1/0",
                                 "stream": "text"})
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    lines = answer.text.splitlines()
    assert lines[0] == "before"  # a line of its own: the traceback starts on the next
    assert "ZeroDivisionError: division by zero" in answer.text
    assert lines[-1].startswith(STATUS + "status=error execution_count=")
    assert lines[-1].endswith("ename=ZeroDivisionError")


@pytest.mark.slow
def test_reattach_as_text_has_what_was_printed_before_and_after(server: LiveServer) -> None:
    started = requests.post(server.url + "/execute", headers=server.headers, timeout=30, json={
        "id": "default", "wait": 0.3,
        "code": "import time\nprint('early', flush=True)\ntime.sleep(1)\nprint('late')"})
    assert started.status_code == 202
    n = started.json()["execution_count"]
    answer = requests.get(server.url + "/env/execution", headers=server.headers, timeout=30,
                          params={"id": "default", "n": n, "stream": "text"})
    assert answer.text.startswith("early\nlate\n")
    assert answer.text.splitlines()[-1].startswith(f"{STATUS}status=ok execution_count={n} ")
    # Accept: text/plain on the reattach route asks for the same.
    again = requests.get(server.url + "/env/execution", params={"id": "default", "n": n},
                         headers={**server.headers, "Accept": "text/plain"}, timeout=30)
    assert again.text == answer.text.replace(answer.text.splitlines()[-1], again.text.splitlines()[-1])
    # stream=false keeps the JSON answer whatever the Accept header says.
    plain = requests.get(server.url + "/env/execution", timeout=30,
                         params={"id": "default", "n": n, "stream": "false"},
                         headers={**server.headers, "Accept": "text/plain"})
    assert plain.json()["stdout"] == "early\nlate\n"


@pytest.mark.slow
@pytest.mark.parametrize("body", [{"stream": True}, {"stream": "text"}])
def test_a_quiet_cell_s_stream_answers_at_once(server: LiveServer, body: dict[str, object]) -> None:
    """The headers go before the first output: a client knows at once that its cell is in."""
    began = time.monotonic()
    with requests.post(server.url + "/execute", headers=server.headers, stream=True, timeout=30,
                       json={"id": "default", "code": "import time; time.sleep(2.5)", **body}) as answer:
        # requests returns once the headers are in; the cell is still asleep.
        headers_at = time.monotonic() - began
        assert answer.status_code == 200
        assert answer.content  # the rest still comes, whole
        ended_at = time.monotonic() - began
        # the headers came while the cell slept its 2.5 s, not with its end
        assert ended_at > 2.4 and ended_at - headers_at > 1.5, (headers_at, ended_at)

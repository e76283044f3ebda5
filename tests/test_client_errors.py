"""The client's errors say what to do: timeouts honoured, URLs without a scheme, tokens, no server."""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kernelserver import Client
from kernelserver.cli import cli
from kernelserver.errors import ConnectionFailed, Unauthorized
from kernelserver.results import ErrorInfo

from helpers import LiveServer, free_port, server_pid, start_server


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"


def no_kernelserver_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELSERVER_")}
    env.update(extra)
    return env


def test_exec_honours_kernelserver_client_timeout(silent_url: str) -> None:
    started = time.monotonic()
    ran = subprocess.run([sys.executable, "-m", "kernelserver.cli", "exec", "--url", silent_url,
                          "--token", "t", "1+1"], capture_output=True, text=True, timeout=30,
                         env=no_kernelserver_env(KERNELSERVER_CLIENT_TIMEOUT="2"))
    elapsed = time.monotonic() - started
    assert ran.returncode == 2
    assert ran.stderr.startswith(f"kernelserver: error: no answer from {silent_url} in time")
    assert ran.stderr.count("\n") == 1
    assert elapsed < 10, f"took {elapsed:.1f} s with a 2 s timeout"


@pytest.mark.parametrize("call", [
    lambda client: client.namespace("x"),
    lambda client: client.namespace("x", create=False).restart(),
    lambda client: client.namespace("x", create=False).delete(),
], ids=["create", "restart", "delete"])
def test_a_timeout_given_to_the_client_is_honoured_everywhere(
        silent_url: str, call: Callable[[Client], object]) -> None:
    started = time.monotonic()
    with Client(silent_url, "t", timeout=1) as client, pytest.raises(ConnectionFailed,
                                                                     match="no answer"):
        call(client)
    assert time.monotonic() - started < 5


def test_only_the_default_timeout_is_raised_for_slow_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KERNELSERVER_CLIENT_TIMEOUT", raising=False)
    url = "http://127.0.0.1:1"
    assert (Client(url).timeout, Client(url).slow_timeout) == (30.0, 60.0)
    assert Client(url, timeout=5).slow_timeout == 5
    assert Client(url, timeout=90).slow_timeout == 90
    monkeypatch.setenv("KERNELSERVER_CLIENT_TIMEOUT", "7")
    assert (Client(url).timeout, Client(url).slow_timeout) == (7.0, 7.0)
    monkeypatch.setenv("KERNELSERVER_CLIENT_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="KERNELSERVER_CLIENT_TIMEOUT must be a number"):
        Client(url)


def test_a_bad_client_timeout_is_one_line_in_the_cli() -> None:
    result = CliRunner(env={"KERNELSERVER_CLIENT_TIMEOUT": "-1"}).invoke(
        cli, ["ls", "--url", "http://127.0.0.1:1", "--token", "t"])
    assert result.exit_code == 2
    assert result.stderr == ("kernelserver: error: KERNELSERVER_CLIENT_TIMEOUT must be a number of "
                             "seconds above 0, not '-1'\n")


@pytest.mark.slow
def test_a_quiet_stream_outlives_a_short_client_timeout(server: LiveServer) -> None:
    # The stream is silent for longer than the timeout: only the keepalive bounds its reads.
    result = CliRunner(env={"KERNELSERVER_CLIENT_TIMEOUT": "1"}).invoke(
        cli, ["exec", "--url", server.url, "--token", server.token,
              "import time\ntime.sleep(2.5)\nprint('late')"])
    assert (result.exit_code, result.stdout) == (0, "late\n"), result.output


def test_error_info_reads_by_key_and_by_attribute() -> None:
    error = ErrorInfo("ZeroDivisionError", "division by zero", "Traceback ...")
    assert error["ename"] == error.ename == "ZeroDivisionError"
    assert error.get("evalue") == "division by zero" and error.get("nope", 3) == 3
    assert dict(error) == error.to_dict() == {"ename": "ZeroDivisionError",
                                              "evalue": "division by zero",
                                              "traceback": "Traceback ..."}
    assert list(error) == list(error.keys()) == ["ename", "evalue", "traceback"]
    assert "traceback" in error and "nope" not in error and len(error) == 3
    assert dict(error.items()) == error.to_dict() and list(error.values())[0] == "ZeroDivisionError"
    with pytest.raises(KeyError):
        error["nope"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        error.ename = "other"  # type: ignore[misc]
    assert error == ErrorInfo.from_dict(error)  # still a value, and readable as its JSON


@pytest.mark.slow
def test_a_cell_error_reads_like_its_json(server: LiveServer) -> None:
    with Client(server.url, server.token) as client:
        result = client.namespace("errors").run("1/0")
    assert result.error is not None
    assert result.error["ename"] == "ZeroDivisionError" and "<cell-" in result.error["traceback"]


@pytest.mark.parametrize("url", ["127.0.0.1:5000", "localhost:5000"])
def test_a_url_without_a_scheme_says_how_to_fix_it(url: str) -> None:
    message = f"--url {url!r} has no scheme: add http:// (http://{url})"
    with pytest.raises(ConnectionFailed) as caught:
        Client(url, "t")
    assert str(caught.value) == message
    result = CliRunner().invoke(cli, ["ls", "--url", url, "--token", "t"])
    assert result.exit_code == 2
    assert result.stderr == f"kernelserver: error: {message}\n"


@pytest.mark.slow
def test_a_wrong_token_in_the_cli_says_where_the_token_comes_from(server: LiveServer) -> None:
    result = CliRunner().invoke(cli, ["exec", "--url", server.url, "--token", "wrong", "1"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"kernelserver: error: wrong token for {server.url}: ")
    assert result.stderr.count("\n") == 1
    for advice in ("`kernelserver token`", "when it starts", "restarted server has a new one",
                   "--token", "KERNELSERVER_TOKEN", "--data-dir"):
        assert advice in result.stderr
    with Client(server.url, "wrong") as client, pytest.raises(Unauthorized, match="^wrong token$"):
        client.info()  # the Python client's error is the server's


@pytest.mark.slow
def test_a_missing_token_in_the_cli_gets_the_same_advice(server: LiveServer, tmp_path: Path) -> None:
    env = {"KERNELSERVER_TOKEN": None, "KERNELSERVER_DATA_DIR": str(tmp_path)}  # no token file
    result = CliRunner(env=env).invoke(cli, ["ls", "--url", server.url])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"kernelserver: error: {server.url} wants a token and none "
                                    "was sent: the server prints its token when it starts")
    assert "--data-dir" in result.stderr and result.stderr.count("\n") == 1


def test_no_server_says_start_one() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    hint = "— is it running? start it with `kernelserver serve`"
    with Client(url, "t", timeout=2) as client, pytest.raises(ConnectionFailed) as caught:
        client.health()
    assert str(caught.value) == f"cannot reach kernelserver at {url}: ConnectionError {hint}"
    result = CliRunner().invoke(cli, ["exec", "--url", url, "--token", "t", "1"])
    assert result.exit_code == 2 and result.stderr.rstrip("\n").endswith(hint)


def test_check_json_reports_an_unreachable_server() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["check", "--json", "--url", url, "--token", "t"])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report == {"ok": False, "url": url, "error": report["error"], "checks": []}
    assert report["error"].startswith(f"cannot reach kernelserver at {url}")
    assert result.stderr.startswith("kernelserver: error: cannot reach kernelserver")


@pytest.mark.slow
def test_a_server_that_dies_mid_stream_is_one_line(tmp_path: Path) -> None:
    doomed = start_server(tmp_path)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kernelserver.cli", "exec", "--url", doomed.url, "--token",
             doomed.token, "import time\nprint('started', flush=True)\ntime.sleep(60)"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=no_kernelserver_env())
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 20)
            assert ready and proc.stdout.readline() == "started\n"
            os.kill(server_pid(doomed.data_dir), signal.SIGKILL)  # the worker serving the stream
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    finally:
        doomed.stop()
    assert proc.returncode == 2
    assert err.startswith("kernelserver: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_a_url_with_another_scheme_is_refused_at_once() -> None:
    with pytest.raises(ConnectionFailed, match="^--url 'ftp://127.0.0.1:5000': the scheme must be "):
        Client("ftp://127.0.0.1:5000", "t")


def test_an_api_error_keeps_the_response_and_the_request(server: LiveServer) -> None:
    from kernelserver.errors import NamespaceNotFound

    with Client(server.url, token=server.token) as client:
        with pytest.raises(NamespaceNotFound) as raised:
            client.namespace("never-made", create=False).info()
    response = raised.value.response
    assert response.status_code == 404 and response.json()["error"]["code"] == "namespace_not_found"
    assert "content-type" in response.headers
    assert raised.value.request.url.endswith("/env/get")


def test_a_connection_failure_keeps_its_request() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", token="t") as client:
        with pytest.raises(ConnectionFailed) as raised:
            client.health()
    assert raised.value.response is None and raised.value.request.url.endswith("/health")


def test_a_running_result_waits_through_the_namespace_that_fetched_it(server: LiveServer) -> None:
    with Client(server.url, token=server.token) as client:
        namespace = client.namespace("waiting")
        try:
            running = namespace.run("import time\ntime.sleep(0.5)\n41 + 1", wait=0)
            assert not running.finished and running.source is namespace
            assert running.wait(timeout=30).result == {"text/plain": "42"}
        finally:
            namespace.delete()
    with pytest.raises(RuntimeError, match="did not come from a Client"):
        dataclasses.replace(running, source=None).wait()

"""The CLI through click's CliRunner, against a real server."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kernelserver.cli import cli

from helpers import LiveServer, free_port

pytestmark = pytest.mark.slow


def invoke(server_url: str, token: str, *args: str, input: str | None = None) -> object:
    runner = CliRunner()
    return runner.invoke(cli, ["exec", "--url", server_url, "--token", token, *args],
                         input=input, catch_exceptions=False)


def test_exec_prints_output_and_result(live_server: LiveServer) -> None:
    result = CliRunner().invoke(cli, ["exec", "--url", live_server.url, "--token", live_server.token,
                                      "--id", "cli", "import sys\nprint('out')\n"
                                      "print('err', file=sys.stderr)\n40 + 2"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "out\n42\n"
    assert result.stderr == "err\n"


def test_exec_failure_exits_non_zero_with_traceback(live_server: LiveServer) -> None:
    result = CliRunner().invoke(cli, ["exec", "--url", live_server.url, "--token", live_server.token,
                                      "print('partial')\n1/0"])
    assert result.exit_code == 1
    assert result.stdout == "partial\n"
    assert "ZeroDivisionError: division by zero" in result.stderr
    assert "<cell-" in result.stderr


def test_exec_reads_stdin_and_env(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELSERVER_URL", live_server.url)
    monkeypatch.setenv("KERNELSERVER_TOKEN", live_server.token)
    result = CliRunner().invoke(cli, ["exec", "--timeout", "1", "-"],
                                input="import time\nprint('x')\ntime.sleep(30)")
    assert result.exit_code == 1
    assert result.stdout == "x\n"
    assert "TimeoutError" in result.stderr


def test_exec_bad_token_is_one_clear_line(live_server: LiveServer) -> None:
    result = CliRunner().invoke(cli, ["exec", "--url", live_server.url, "--token", "wrong", "1"])
    assert result.exit_code == 2
    # One line that says where the right token comes from (test_client_errors.py checks what).
    assert result.stderr.startswith("kernelserver: error: wrong token for ")
    assert result.stderr.count("\n") == 1


def test_exec_unreachable_server_is_one_clear_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["exec", "--url", url, "--token", "t", "1"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"kernelserver: error: cannot reach kernelserver at {url}")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_exec_bad_id_is_one_clear_line(live_server: LiveServer) -> None:
    result = CliRunner().invoke(cli, ["exec", "--url", live_server.url, "--token", live_server.token,
                                      "--id", "../x", "1"])
    assert result.exit_code == 2
    assert result.stderr.startswith("kernelserver: error: invalid namespace id")

"""The namespace commands (ls, history, show, attach, interrupt, restart, rm), stop, and serve's
start-up checks, run as a user runs them: `kernelserver ...` subprocesses against a real server."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernelserver import Client
from kernelserver.datadir import holder

from helpers import LiveServer, free_port, held_until, server_pid, start_server, wait_until

pytestmark = pytest.mark.slow

# A cell that prints a line every 0.3 s, then ends with a value.
TICKER = "import time\nfor i in range({lines}):\n    print(i, flush=True)\n    time.sleep(0.3)\n'done'"


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[Client]:
    """A Python client of the module's server, to set the scene."""
    with Client(server.url, server.token) as connected:
        yield connected


def cli_env(server: LiveServer | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELSERVER_")}
    if server is not None:
        env.update(KERNELSERVER_URL=server.url, KERNELSERVER_TOKEN=server.token)
    env.update(extra)
    return env


def ks(server: LiveServer | None, *args: str, timeout: float = 60,
       **env: str) -> subprocess.CompletedProcess[str]:
    """Run `kernelserver ARGS` against the server, as a user would."""
    return subprocess.run([sys.executable, "-m", "kernelserver.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=cli_env(server, **env))


def start_ticker(client: Client, namespace_id: str, lines: int = 10) -> int:
    """Start the ticker cell without waiting; its execution_count once it has printed a line."""
    n = int(client.namespace(namespace_id).run(TICKER.format(lines=lines), wait=0).execution_count)
    namespace = client.namespace(namespace_id, create=False)
    assert wait_until(lambda: namespace.execution(n).stdout.startswith("0\n"), 15)
    return n


def ticker_output(lines: int) -> str:
    return "".join(f"{i}\n" for i in range(lines)) + "'done'\n"


def test_ls_shows_a_table_that_fits_and_json(server: LiveServer, client: Client) -> None:
    long_id = "a-namespace-with-a-very-long-name-" + "x" * 30
    client.namespace("alpha").run("big = bytearray(8 * 2**20)")
    client.namespace(long_id)
    shown = ks(server, "ls", COLUMNS="60")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "CELLS", "RUNNING", "MEMORY", "LAST", "ACTIVITY"]
    assert all(len(line) <= 60 for line in lines), lines
    alpha = next(line for line in lines if line.startswith("alpha "))
    assert alpha.split()[1:4] == ["idle", "1", "-"]
    assert "MiB" in alpha and alpha.endswith(" s ago")
    cut = next(line for line in lines if line.startswith("a-name"))
    assert long_id not in cut and cut.split()[0].endswith("…")
    assert long_id in ks(server, "ls", COLUMNS="200").stdout  # room enough: not cut
    as_json = ks(server, "ls", "--json")
    envs = {env["id"]: env for env in json.loads(as_json.stdout)["envs"]}
    assert envs["alpha"]["execution_count"] == 1 and envs["alpha"]["running"] is None
    assert envs["alpha"]["memory_rss"] > 8 * 2**20 and long_id in envs


def test_client_commands_find_the_token_through_data_dir(server: LiveServer, client: Client) -> None:
    client.namespace("alpha")
    # No KERNELSERVER_TOKEN: the token file of the server's data dir is used.
    found = ks(None, "ls", "--url", server.url, "--data-dir", str(server.data_dir))
    assert found.returncode == 0, found.stderr
    assert any(line.startswith("alpha ") for line in found.stdout.splitlines())
    ran = ks(None, "exec", "--url", server.url, "--data-dir", str(server.data_dir), "6 * 7")
    assert (ran.returncode, ran.stdout) == (0, "42\n"), ran.stderr


def test_history_lists_cells_and_cuts_code_to_fit(server: LiveServer, client: Client) -> None:
    namespace = client.namespace("hist")
    namespace.run("x = 1  # " + "a long comment " * 10 + "\ny = 2")
    namespace.run("1/0")
    shown = ks(server, "history", "hist", COLUMNS="60")
    assert shown.returncode == 0, shown.stderr
    header, first, second = shown.stdout.splitlines()
    assert header.split() == ["N", "STATUS", "DURATION", "CODE"]
    assert first.split()[:2] == ["1", "ok"] and " ms " in first
    assert "x = 1  # a long comment" in first and first.endswith("…") and len(first) <= 60
    assert second.split()[:2] == ["2", "error"] and second.endswith("1/0")
    newest = ks(server, "history", "hist", "--limit", "1")
    assert [line.split()[0] for line in newest.stdout.splitlines()] == ["N", "2"]
    as_json = json.loads(ks(server, "history", "hist", "--json").stdout)
    assert [(e["execution_count"], e["status"]) for e in as_json["executions"]] == [(1, "ok"),
                                                                                   (2, "error")]
    missing = ks(server, "history", "no-such-namespace")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "no-such-namespace" in missing.stderr and "Traceback" not in missing.stderr


def test_show_prints_a_finished_cell_and_exits_1_for_a_failed_one(server: LiveServer,
                                                                  client: Client) -> None:
    namespace = client.namespace("shown")
    namespace.run("import sys\nprint('out')\nprint('err', file=sys.stderr)\n6 * 7")
    namespace.run("print('before')\n1/0")
    ok = ks(server, "show", "shown", "1")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "out\n42\n", "err\n")
    failed = ks(server, "show", "shown", "2")
    assert failed.returncode == 1 and failed.stdout == "before\n"
    assert "ZeroDivisionError: division by zero" in failed.stderr and "<cell-2>" in failed.stderr
    as_json = json.loads(ks(server, "show", "shown", "2", "--json").stdout)
    assert as_json["status"] == "error" and as_json["error"]["ename"] == "ZeroDivisionError"
    missing = ks(server, "show", "shown", "99")
    assert missing.returncode == 1
    assert missing.stderr == ("kernelserver: error: no execution 99 in namespace 'shown' "
                              "(`kernelserver history shown` lists its cells)\n")


def test_show_a_running_cell_then_interrupt_it(server: LiveServer, client: Client) -> None:
    n = start_ticker(client, "busy", lines=200)  # 60 s: the interrupt, not its end, stops it
    shown = ks(server, "show", "busy", str(n))
    assert shown.returncode == 0 and shown.stdout.startswith("0\n")
    assert f"is still running; follow it live with `kernelserver attach busy {n}`" in shown.stderr
    stopped = ks(server, "interrupt", "busy")
    assert (stopped.returncode, stopped.stdout) == (0, "interrupted the cell running in 'busy'\n")
    assert client.namespace("busy", create=False).wait_for(n, timeout=15).status == "interrupted"
    after = ks(server, "show", "busy", str(n))
    assert after.returncode == 1 and "KeyboardInterrupt" in after.stderr
    idle = ks(server, "interrupt", "busy", "--json")
    assert idle.returncode == 1 and json.loads(idle.stdout) == {"id": "busy", "interrupted": False}


def test_attach_by_number_prints_output_from_before_and_after(server: LiveServer,
                                                              client: Client) -> None:
    n = start_ticker(client, "tick")
    attached = ks(server, "attach", "tick", str(n))
    # 0 was printed before attach started, 9 about 3 s later, while attached.
    assert (attached.returncode, attached.stdout, attached.stderr) == (0, ticker_output(10), "")


def test_attach_without_n_follows_the_running_cell(server: LiveServer, client: Client,
                                                   tmp_path: Path) -> None:
    # The cell waits for the test after its first line: however slow the CLI is to start, the
    # cell is still running when it asks what runs.
    go_on = tmp_path / "go-on"
    code = ("print(0, flush=True)\n" + held_until(go_on) +
            "for i in range(1, 6):\n    print(i, flush=True)\n    time.sleep(0.1)\n'done'")
    n = int(client.namespace("tick2").run(code, wait=0).execution_count)
    assert client.namespace("tick2", create=False).info()["running"] == n
    proc = subprocess.Popen([sys.executable, "-m", "kernelserver.cli", "attach", "tick2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(server))
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and proc.stdout.readline() == "0\n"  # attached to the running cell
        go_on.touch()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert (proc.returncode, "0\n" + out) == (0, ticker_output(6)), err
    idle = ks(server, "attach", "tick2")
    assert idle.returncode == 1 and idle.stdout == ""
    assert idle.stderr == ("kernelserver: error: nothing is running in 'tick2'; `kernelserver "
                           "history tick2` lists its cells, `kernelserver show tick2 N` prints one\n")


def test_ctrl_c_detaches_and_the_cell_goes_on(server: LiveServer, client: Client, tmp_path: Path) -> None:
    # The cell runs until the test lets it go: however slow the CLI is to start, it is still running.
    go_on = tmp_path / "go-on"
    code = "print(0, flush=True)\n" + held_until(go_on) + "print('let go')\n'done'"
    n = int(client.namespace("detach").run(code, wait=0).execution_count)
    # As from a terminal: SIGINT not ignored, even when this suite runs as a background job
    # (a non-interactive shell's `cmd &` ignores it, and children inherit that).
    proc = subprocess.Popen([sys.executable, "-m", "kernelserver.cli", "attach", "detach", str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(server),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and proc.stdout.readline() == "0\n"  # attached, and streaming
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert err.endswith("kernelserver: detached; the cell is still running (kernelserver interrupt "
                        "detach stops it)\n")
    assert "Traceback" not in err
    assert client.namespace("detach", create=False).execution(n).status == "running"
    go_on.touch()
    assert client.namespace("detach", create=False).wait_for(n, timeout=30).status == "ok"
    shown = ks(server, "show", "detach", str(n))
    assert (shown.returncode, shown.stdout) == (0, "0\nlet go\n'done'\n")


def test_exec_json_prints_the_stream_as_ndjson(server: LiveServer) -> None:
    ran = ks(server, "exec", "--json", "--id", "nd", "print('hi')\n6 * 7")
    assert ran.returncode == 0, ran.stderr
    events = [json.loads(line) for line in ran.stdout.splitlines()]
    assert events[0] == {"event": "stdout", "text": "hi\n"}
    assert events[-1]["event"] == "result" and events[-1]["result"] == {"text/plain": "42"}


def test_restart_and_rm(server: LiveServer, client: Client) -> None:
    client.namespace("life").run("x = 5")
    restarted = ks(server, "restart", "life")
    assert restarted.returncode == 0 and "restarted 'life'" in restarted.stdout
    assert client.namespace("life", create=False).run("x").error["ename"] == "NameError"
    removed = ks(server, "rm", "life", "--json")
    assert removed.returncode == 0 and json.loads(removed.stdout)["deleted"] is True
    assert "life" not in [env["id"] for env in client.namespaces()]
    again = ks(server, "rm", "life")
    assert again.returncode == 1 and again.stderr.startswith("kernelserver: error: no namespace "
                                                             "'life'")
    assert ks(server, "interrupt", "never-was").returncode == 1
    assert ks(server, "restart", "never-was").returncode == 1


def test_stop_stops_the_local_server_and_frees_its_data_dir(tmp_path: Path) -> None:
    own = start_server(tmp_path)
    try:
        pid, port = server_pid(own.data_dir), own.url.rsplit(":", 1)[1]
        stopped = ks(None, "stop", "--data-dir", str(own.data_dir))
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout == f"stopped the kernelserver on 127.0.0.1:{port} (pid {pid})\n"
        assert own.proc.wait(15) == 0  # `kernelserver serve` itself is gone, cleanly
        assert holder(own.data_dir) is None
        again = ks(None, "stop", "--data-dir", str(own.data_dir))
        assert again.returncode == 1 and again.stderr.count("\n") == 1
        assert again.stderr.startswith("kernelserver: error: no kernelserver is running from the "
                                       f"data dir {own.data_dir}")
        as_json = json.loads(ks(None, "stop", "--data-dir", str(own.data_dir), "--json").stdout)
        assert as_json["stopped"] is False and "no kernelserver" in as_json["error"]
    finally:
        own.stop()


# Holds a data dir's lock as a server would, and ignores SIGTERM.
STUBBORN_HOLDER = """
import fcntl, json, os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
lock.truncate(0)
json.dump({"pid": os.getpid(), "parent": None, "host": "127.0.0.1", "port": 1}, lock)
lock.flush()
print("ready", flush=True)
time.sleep(60)
"""


def test_stop_says_so_when_the_server_outlives_the_timeout(tmp_path: Path) -> None:
    holder_proc = subprocess.Popen([sys.executable, "-c", STUBBORN_HOLDER, str(tmp_path / "server.lock")],
                                   stdout=subprocess.PIPE, text=True)
    try:
        assert holder_proc.stdout is not None
        ready, _, _ = select.select([holder_proc.stdout], [], [], 20)
        assert ready and holder_proc.stdout.readline() == "ready\n"
        started = time.monotonic()
        stopped = ks(None, "stop", "--data-dir", str(tmp_path), "--timeout", "1")
        assert stopped.returncode == 1
        assert stopped.stderr == (f"kernelserver: error: the kernelserver on 127.0.0.1:1 (pid "
                                  f"{holder_proc.pid}) is still running 1 s after SIGTERM (it may "
                                  "be finishing its cells); wait longer with --timeout\n")
        assert time.monotonic() - started < 10
    finally:
        holder_proc.kill()
        holder_proc.communicate(timeout=10)


def test_serve_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        served = ks(None, "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
                    KERNELSERVER_TOKEN="t" * 20)
    assert served.returncode == 1
    assert served.stderr == (f"kernelserver: error: port {port} on 127.0.0.1 is in use: another "
                             "program listens there; choose another with --port\n")
    assert served.stdout == "" and time.monotonic() - started < 15


def test_a_second_serve_on_a_data_dir_names_the_first(server: LiveServer) -> None:
    port = free_port()
    served = ks(None, "serve", "--port", str(port), "--data-dir", str(server.data_dir),
                KERNELSERVER_TOKEN="t" * 20)
    assert served.returncode == 1 and served.stdout == ""
    first_port = server.url.rsplit(":", 1)[1]
    assert served.stderr.count("\n") == 1, served.stderr
    assert served.stderr.startswith(f"kernelserver: error: the data dir {server.data_dir} is in use "
                                    f"by the kernelserver on 127.0.0.1:{first_port} "
                                    f"(pid {server_pid(server.data_dir)})")
    assert f"kernelserver stop --data-dir {server.data_dir}" in served.stderr


@pytest.mark.parametrize("command", ["ls", "history", "show", "attach", "interrupt", "restart",
                                     "rm"])
def test_the_client_commands_load_no_server_code(command: str) -> None:
    # They run on a laptop with the client alone (DESIGN.md section 4); `stop` and `serve` may.
    probe = ("import json, sys\nfrom kernelserver.cli import main\n"
             f"sys.argv = ['kernelserver', {command!r}, '--help']\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    loaded = set(json.loads(out.splitlines()[-1]))
    server_only = {"flask", "gunicorn", "kernelserver.service", "kernelserver.history",
                   "kernelserver.datadir", "sqlite3"}
    assert sorted(loaded & server_only) == []


def test_token_says_the_recorded_server_is_not_running_after_a_kill_9(tmp_path: Path) -> None:
    own = start_server(tmp_path, token="")  # a generated token, as a user's server has
    master = own.proc.pid
    try:
        running = ks(None, "token", "--data-dir", str(own.data_dir))
        assert running.returncode == 0 and running.stdout.strip() in own.output(), running.stderr
        worker = server_pid(own.data_dir)
        # kill -9 the server; its master is held stopped so that nothing reaps it yet: the pid
        # the token file names still exists (as a zombie, or a recycled pid would), but no
        # server runs there.
        os.kill(master, signal.SIGSTOP)
        os.kill(worker, signal.SIGKILL)
        assert wait_until(lambda: holder(own.data_dir) is None, 15)
        dead = ks(None, "token", "--data-dir", str(own.data_dir))
        assert dead.returncode == 1 and dead.stdout == "", dead.stdout
        assert dead.stderr.count("\n") == 1, dead.stderr
        assert dead.stderr.startswith("kernelserver: error: the kernelserver recorded in "
                                      f"{own.data_dir / 'token.json'}")
        assert f"pid {worker})" in dead.stderr and "is not running" in dead.stderr
        # Master and worker both gone (nothing left to reap into a zombie): the same answer.
        os.kill(master, signal.SIGKILL)
        os.kill(master, signal.SIGCONT)
        own.proc.wait(15)
        gone = ks(None, "token", "--data-dir", str(own.data_dir))
        assert gone.returncode == 1 and "is not running" in gone.stderr, gone.stderr
    finally:
        try:
            os.kill(master, signal.SIGCONT)
        except ProcessLookupError:
            pass
        own.stop(signal.SIGKILL)

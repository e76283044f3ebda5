"""The process backend with real workers: interrupt, timeout, crash, C output, memory, parallelism."""

from __future__ import annotations

import ast
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from kernelserver.backends.forkserver import ForkServer
from kernelserver.backends.process import ProcessKernel, rss_bytes
from kernelserver.execution import Execution
from kernelserver.results import Cell

from helpers import ApiClient, as_fast_as_alone, pid_alive, wait_until


def run_in_thread(api: ApiClient, code: str, id: str = "default", **extra: Any) -> tuple[
        threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        box.update(api.run(code, id=id, **extra))

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def wait_busy(api: ApiClient, id: str = "default") -> None:
    def busy() -> bool:
        envs = api.get("/env/list").get_json()["envs"]
        return any(e["id"] == id and e["state"] == "busy" for e in envs)

    assert wait_until(busy, 10)


def test_interrupt_stops_a_busy_loop_and_keeps_state(papi: ApiClient) -> None:
    papi.run("kept = 'still here'")
    thread, box = run_in_thread(papi, "print('looping', flush=True)\nwhile True:\n    pass")
    wait_busy(papi)
    # the cell is in its loop: it has printed what it prints first
    assert wait_until(lambda: papi.latest().get("stdout") == "looping\n", 10)
    assert papi.post("/env/interrupt", json={"id": "default"}).get_json()["interrupted"] is True
    thread.join(10)
    assert box["status"] == "interrupted"
    assert box["error"]["ename"] == "KeyboardInterrupt"
    assert box["stdout"] == "looping\n"
    assert box["restarted"] is False
    assert papi.run("kept")["result"] == {"text/plain": "'still here'"}


def test_sleep_with_timeout_answers_timeout_within_seconds(papi: ApiClient) -> None:
    papi.run("before = 1")
    started = time.monotonic()
    data = papi.run("print('sleeping', flush=True)\nimport time\ntime.sleep(60)", timeout=1)
    assert time.monotonic() - started < 5
    assert data["status"] == "timeout"
    assert data["error"]["ename"] == "TimeoutError"
    assert data["stdout"] == "sleeping\n"
    assert data["restarted"] is False
    assert "time.sleep(60)" in data["error"]["traceback"]
    assert papi.run("before")["result"] == {"text/plain": "1"}


def test_stuck_in_c_is_killed_and_namespace_restarted(make_app: Callable[..., Flask]) -> None:
    api = ApiClient(make_app(backend="process", interrupt_grace=0.5).test_client())
    api.run("lost = 1")
    pid_before = api.post("/env/get", json={"id": "default"}).get_json()["pid"]
    started = time.monotonic()
    data = api.run("print('going into C', flush=True)\nsum(range(10**12))", timeout=1)
    assert time.monotonic() - started < 10
    assert data["status"] == "timeout"
    assert data["error"]["ename"] == "TimeoutError"
    assert data["restarted"] is True
    assert data["stdout"] == "going into C\n"
    assert not pid_alive(pid_before)
    after = api.run("lost")
    assert after["error"]["ename"] == "NameError"
    assert api.run("1 + 1")["result"] == {"text/plain": "2"}


@pytest.mark.parametrize(("code", "how"), [
    ("import os\nos._exit(3)", "exited with code 3"),
    ("import ctypes\nctypes.string_at(0)", "killed by SIGSEGV"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL"),
], ids=["os-exit", "segfault", "sigkill-oom-like"])
def test_worker_death_is_contained_and_reported(papi: ApiClient, code: str, how: str) -> None:
    papi.run("state = 1")
    data = papi.run("print('last words', flush=True)\n" + code)
    assert data["status"] == "error"
    assert data["error"]["ename"] == "WorkerDied"
    assert how in data["error"]["evalue"]
    assert data["stdout"] == "last words\n"
    assert data["restarted"] is True
    assert papi.run("state")["error"]["ename"] == "NameError"
    assert papi.run("'alive'")["result"] == {"text/plain": "'alive'"}
    assert papi.get("/health").status_code == 200


def test_segfault_shows_python_stack_on_stderr(papi: ApiClient) -> None:
    data = papi.run("import ctypes\ndef crash():\n    ctypes.string_at(0)\ncrash()")
    assert "Segmentation fault" in data["stderr"]
    assert "crash" in data["stderr"]


def test_c_level_output_is_captured_in_order(papi: ApiClient) -> None:
    code = (
        "import ctypes, os, subprocess, sys\n"
        "libc = ctypes.CDLL(None)\n"
        "print('one')\n"
        "libc.printf(b'two from printf\\n')\n"
        "os.system('echo three from os.system')\n"
        "subprocess.run(['sh', '-c', 'echo four from a subprocess; echo err from sh >&2'])\n"
        "os.write(1, b'five from os.write\\n')\n"
    )
    data = papi.run(code)
    assert data["status"] == "ok"
    assert "two from printf\n" in data["stdout"]
    # Within a stream, in order (printf is flushed at the cell's end, so it may come last).
    python_order = [line for line in data["stdout"].splitlines() if "printf" not in line]
    assert python_order == ["one", "three from os.system", "four from a subprocess",
                            "five from os.write"]
    assert data["stderr"] == "err from sh\n"


def test_printf_flushed_with_fflush_keeps_order(papi: ApiClient) -> None:
    code = ("import ctypes\nlibc = ctypes.CDLL(None)\nprint('a', flush=True)\n"
            "libc.printf(b'b\\n'); libc.fflush(None)\nprint('c')")
    assert papi.run(code)["stdout"] == "a\nb\nc\n"


def test_delete_frees_the_memory(papi: ApiClient) -> None:
    papi.create("big")
    papi.run("blob = b'x' * (600 * 1024 * 1024)", id="big")
    info = papi.post("/env/get", json={"id": "big"}).get_json()
    pid = info["pid"]
    assert info["memory_rss"] > 600 * 1024 * 1024
    before = rss_bytes(pid)
    assert before is not None
    papi.post("/env/delete", json={"id": "big"})
    # The worker is gone when delete returns: no wait needed.
    assert not pid_alive(pid)
    assert rss_bytes(pid) is None


def test_restart_frees_memory_and_replaces_the_worker(papi: ApiClient) -> None:
    papi.create("r")
    papi.run("blob = b'x' * (200 * 1024 * 1024)", id="r")
    old_pid = papi.post("/env/get", json={"id": "r"}).get_json()["pid"]
    info = papi.post("/env/restart", json={"id": "r"}).get_json()
    assert info["pid"] != old_pid and not pid_alive(old_pid)
    assert info["memory_rss"] < 100 * 1024 * 1024
    assert info["variables"] == []


def test_two_namespaces_sleep_in_parallel(papi: ApiClient) -> None:
    papi.create("p1")
    papi.create("p2")
    # Each cell says when it slept; in parallel the two sleeps overlap (in turn they could not),
    # however slow the machine is to start them.
    code = "import time\nbegan = time.time()\ntime.sleep(2)\n(began, time.time())"
    threads = [run_in_thread(papi, code, id=n) for n in ("p1", "p2")]
    for thread, _ in threads:
        thread.join(30)
    spans = [ast.literal_eval(box["result"]["text/plain"]) for _, box in threads]
    assert max(began for began, _ in spans) < min(ended for _, ended in spans), spans


def test_busy_namespace_does_not_block_others(papi: ApiClient) -> None:
    papi.create("slow")
    papi.create("fast")
    def others() -> tuple[float, str]:
        started = time.monotonic()
        assert papi.get("/health").status_code == 200
        assert papi.get("/env/list").status_code == 200
        assert papi.run("1", id="fast")["status"] == "ok"
        state = papi.post("/env/get", json={"id": "slow"}).get_json()["state"]
        return time.monotonic() - started, state

    alone, _ = others()  # the same calls with nothing running: this run's measure of them
    thread, _ = run_in_thread(papi, "import time\ntime.sleep(60)", id="slow")
    wait_busy(papi, "slow")
    beside, state = others()
    assert state == "busy"  # they were answered while the cell ran, not after it
    assert as_fast_as_alone(alone, beside), (alone, beside)
    assert wait_until(lambda: papi.post("/env/interrupt", json={"id": "slow"}).get_json()["interrupted"],
                      10, 0.05)
    thread.join(10)


def test_variables_listed_while_a_cell_runs(papi: ApiClient) -> None:
    papi.run("ready = True")
    thread, _ = run_in_thread(papi, "import time\ntime.sleep(1.5)")
    wait_busy(papi)
    names = [v["name"] for v in papi.post("/env/get", json={"id": "default"}).get_json()["variables"]]
    assert "ready" in names
    thread.join(10)


def test_namespace_is_main_and_cell_classes_pickle(papi: ApiClient) -> None:
    code = (
        "import pickle\n"
        "class Point:\n"
        "    def __init__(self, x):\n"
        "        self.x = x\n"
        "p = pickle.loads(pickle.dumps(Point(7)))\n"
        "(__name__, type(p).__module__, p.x)"
    )
    assert papi.run(code)["result"] == {"text/plain": "('__main__', '__main__', 7)"}


def test_multiprocessing_can_use_cell_functions(papi: ApiClient) -> None:
    code = (
        "import multiprocessing\n"
        "def square(v):\n"
        "    return v * v\n"
        "with multiprocessing.get_context('fork').Pool(2) as pool:\n"
        "    out = pool.map(square, [1, 2, 3])\n"
        "out"
    )
    assert papi.run(code, timeout=30)["result"] == {"text/plain": "[1, 4, 9]"}


def test_worker_pid_memory_and_states(papi: ApiClient) -> None:
    papi.create("w")
    info = papi.post("/env/get", json={"id": "w"}).get_json()
    assert isinstance(info["pid"], int) and info["pid"] != os.getpid()
    assert info["memory_rss"] > 1024 * 1024
    assert {e["state"] for e in papi.get("/env/list").get_json()["envs"]} == {"idle"}


def test_worker_stdin_is_empty(papi: ApiClient) -> None:
    data = papi.run("import sys, os\n(sys.stdin.read(), os.read(0, 10))")
    assert data["result"] == {"text/plain": "('', b'')"}


def test_kernel_handle_is_a_context_manager() -> None:
    forkserver = ForkServer()
    forkserver.start()
    try:
        with ProcessKernel(forkserver, {}, 1.0, autostart=False) as kernel:
            assert kernel.is_alive()
            pid = kernel.pid
            assert pid is not None
            sink = Execution("k", 1, "", 1000)
            outcome = kernel.execute(Cell("6 * 7"), 1, sink)
            assert outcome.result == {"text/plain": "42"}
            assert kernel.interrupt(1) is False  # it has finished
            kernel.restart()
            assert kernel.pid != pid and not pid_alive(pid)
        assert not kernel.is_alive()
    finally:
        forkserver.close()


def test_output_between_cells_is_not_lost(papi: ApiClient, tmp_path: Path) -> None:
    printed = tmp_path / "printed"
    papi.run("import threading, time\n"
             "threading.Thread(target=lambda: (time.sleep(0.3), print('late', flush=True), "
             f"open({str(printed)!r}, 'w').close())).start()")
    assert wait_until(printed.exists, 10)  # 'late' was printed, between the cells
    assert papi.run("print('next')")["stdout"] == "late\nnext\n"


def test_cell_that_points_fd_1_and_2_elsewhere_is_answered_at_once(papi: ApiClient,
                                                                   tmp_path: Path) -> None:
    log = tmp_path / "cell.log"
    code = (f"import os\nfd = os.open({str(log)!r}, os.O_WRONLY | os.O_CREAT)\n"
            "saved = os.dup(1), os.dup(2)\nos.dup2(fd, 1)\nos.dup2(fd, 2)\n"
            "os.write(1, b'into the file\\n')\ndisplay({'text/plain': 'shown'}, raw=True)\n")
    started = time.monotonic()
    data = papi.run(code)
    # The worker's markers go to its own copies of the pipes, not into the file: no 5 s stall.
    assert time.monotonic() - started < 3
    assert data["status"] == "ok" and data["displays"] == [{"text/plain": "shown"}]
    assert log.read_text() == "into the file\n"
    papi.run("os.dup2(saved[0], 1)\nos.dup2(saved[1], 2)")
    assert papi.run("print('back')")["stdout"] == "back\n"


def test_the_fork_servers_reader_survives_a_close_between_two_reads() -> None:
    # close() sets the socket attribute to None while the reader thread may be between two
    # reads: the reader used to read it again and die with AttributeError (a traceback in the
    # server's log at every stop that hit the gap).
    server = ForkServer()
    server.start()
    real, process = server._sock, server._proc
    assert real is not None and server._reader is not None
    failures: list[BaseException] = []
    hook, threading.excepthook = threading.excepthook, lambda args: failures.append(args.exc_value)

    class Racing:
        """The reader's socket: its next read is where close() lands, then the end."""

        def __init__(self) -> None:
            self.reads = 0

        def recv(self, size: int) -> bytes:
            self.reads += 1
            if self.reads == 1:
                server._sock = None  # what close() does, between this read and the next
                return b'{"op": "exit", "pid": 1, "status": 0}'
            return b""

    try:
        # A second reader on the racing socket, as the first would be after its next wake-up.
        server._sock = Racing()  # type: ignore[assignment]
        reader = threading.Thread(target=server._read_loop, name="forkserver-reader-race")
        server._proc = None  # that reader must not reap the real process: close() below does
        reader.start()
        reader.join(10)
        assert not reader.is_alive() and failures == [], failures
    finally:
        threading.excepthook = hook
        server._sock, server._proc = real, process
        server.close()

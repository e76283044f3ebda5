"""Per-namespace limits against a real server: memory (cgroup and watchdog), OOM order, idle culling."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from kernelserver.backends.memory import Limits
from kernelserver.config import parse_size

from helpers import LiveServer, pid_alive, server_pid, start_server, wait_until

pytestmark = pytest.mark.slow

HOG = "print('before the hog')\nhog = b'\\x01' * (600 << 20)\nprint('after the hog')"


def post(server: LiveServer, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(server.url + path, json=body, headers=server.headers, timeout=90)


def run(server: LiveServer, namespace: str, code: str) -> dict[str, Any]:
    answer: dict[str, Any] = post(server, "/execute", {"id": namespace, "code": code}).json()
    return answer


def cgroup_limits() -> tuple[bool, str]:
    """Whether this user may make memory cgroups here, and why not."""
    limits = Limits("cgroup")
    limits.close()
    return limits.method.startswith("cgroup"), limits.why


@pytest.fixture(scope="module", params=["cgroup", "watchdog"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    method = request.param
    usable, why = cgroup_limits()
    if method == "cgroup" and not usable:
        pytest.skip(f"no memory cgroup this user may create here: {why}")
    live = start_server(tmp_path_factory.mktemp(f"limits-{method}"),
                        env={"KERNELSERVER_MEMORY_LIMIT_METHOD": method})
    info = requests.get(live.url + "/info", headers=live.headers, timeout=60).json()
    assert info["limits"]["memory_limit_method"].startswith(method)
    yield live
    live.stop()


def test_a_cell_past_its_memory_limit_is_stopped_the_rest_untouched(server: LiveServer) -> None:
    created = post(server, "/env/create", {"id": "hungry", "memory_limit": "256M"})
    assert created.status_code == 201 and created.json()["memory_limit"] == 256 << 20
    post(server, "/env/create", {"id": "neighbour"})
    run(server, "neighbour", "kept = 'still here'")
    run(server, "hungry", "mine = 1")
    answer = run(server, "hungry", HOG)
    assert answer["status"] == "error", answer
    assert answer["error"]["ename"] == "MemoryLimitExceeded"
    assert "256 MiB" in answer["error"]["evalue"]
    assert answer["stdout"] == "before the hog\n"  # what it printed before is kept
    assert answer["restarted"] is True
    # Restarted empty, and usable at once; the neighbour and the server never noticed.
    again = run(server, "hungry", "'mine' in globals()")
    assert again["status"] == "ok" and again["result"]["text/plain"] == "False"
    assert run(server, "neighbour", "kept")["result"]["text/plain"] == "'still here'"
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_a_subprocess_past_the_limit_stops_the_cell(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "child-hog", "memory_limit": "256M"})
    code = ("import subprocess, sys\nprint('starting it')\n"
            "subprocess.run([sys.executable, '-c', \"import time; x = b'1' * (600 << 20); "
            "time.sleep(30)\"])\nprint('never')")
    started = time.monotonic()
    answer = run(server, "child-hog", code)
    assert answer["error"]["ename"] == "MemoryLimitExceeded", answer
    # (cgroup v1 kills only the biggest process at once, here the subprocess; the cell is
    # stopped at the next check, 0.1 s on, and may print meanwhile.)
    assert answer["stdout"].startswith("starting it\n")
    assert time.monotonic() - started < 20  # stopped, not left to sleep


def test_address_space_is_not_what_is_limited(server: LiveServer) -> None:
    # CUDA reserves tens of GiB of address space when it starts and touches none of it: a limit
    # on address space (RLIMIT_AS) would stop it; resident memory is what is counted.
    post(server, "/env/create", {"id": "cuda-like", "memory_limit": "256M"})
    code = ("import ctypes, mmap\nlibc = ctypes.CDLL(None)\nlibc.mmap.restype = ctypes.c_void_p\n"
            "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, "
            "ctypes.c_int, ctypes.c_long]\n"
            "where = libc.mmap(None, 64 << 30, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000, "
            "-1, 0)\nwhere not in (None, ctypes.c_void_p(-1).value)")  # PROT_NONE, MAP_NORESERVE
    answer = run(server, "cuda-like", code)
    assert answer["status"] == "ok" and answer["result"]["text/plain"] == "True", answer
    used = post(server, "/env/get", {"id": "cuda-like"}).json()["memory_used"]
    assert used < 256 << 20


def test_limits_are_reported_and_checked(server: LiveServer) -> None:
    for bad in ("lots", "10M", -5, True):
        answer = post(server, "/env/create", {"id": "bad-limit", "memory_limit": bad})
        assert answer.status_code == 400, bad
        assert "memory_limit" in answer.json()["error"]["message"], bad
    assert post(server, "/env/get", {"id": "bad-limit"}).status_code == 404
    info = post(server, "/env/create", {"id": "unlimited"}).json()
    assert info["memory_limit"] == 0 and info["cull_idle_after"] == 0
    # An existing namespace keeps its limit; the answer says which it has.
    post(server, "/env/create", {"id": "limited", "memory_limit": 300 << 20})
    again = post(server, "/env/create", {"id": "limited", "memory_limit": "1G"})
    assert again.status_code == 200 and again.json()["memory_limit"] == 300 << 20
    assert post(server, "/env/get", {"id": "limited"}).json()["memory_limit"] == 300 << 20


def test_workers_are_killed_before_the_server_when_memory_runs_out(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "oom-order"})
    worker = post(server, "/env/get", {"id": "oom-order"}).json()["pid"]
    app = server_pid(server.data_dir)

    def adj(pid: int) -> int:
        return int(Path(f"/proc/{pid}/oom_score_adj").read_text())

    assert adj(worker) > adj(app) and adj(worker) >= 500
    child = run(server, "oom-order", "import subprocess\np = subprocess.Popen(['sleep', '60'])\n"
                                     "p.pid")["result"]["text/plain"]
    assert adj(int(child)) == adj(worker)  # what a cell starts goes first too
    run(server, "oom-order", "p.kill()")


def test_a_deleted_limited_namespace_leaves_no_group_behind(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "tidy", "memory_limit": "256M"})
    pid = post(server, "/env/get", {"id": "tidy"}).json()["pid"]
    group = Path(f"/proc/{pid}/cgroup").read_text()
    post(server, "/env/delete", {"id": "tidy"})
    assert wait_until(lambda: not pid_alive(pid), 10)
    for line in group.splitlines():
        number, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(",") and "kernelserver-" in path:
            assert not Path("/sys/fs/cgroup/memory" + path).exists()


@pytest.mark.parametrize(("text", "size"), [
    ("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("64 mb", 64 << 20), ("1024", 1024),
    (4096, 4096), ("0", 0),
])
def test_sizes_read_as_people_write_them(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_cgroup_v2_moves_only_the_servers_own_processes(tmp_path: Path) -> None:
    # No cgroup v2 memory controller is lent here; a tree of plain files stands in for one, to
    # check what the server would write (the kernel's side is not simulated).
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    own = tmp_path / "cg" / "svc"
    own.mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(f"40 30 0:40 / {tmp_path / 'cg'} rw - cgroup2 cgroup2 rw\n")
    (proc / "self" / "cgroup").write_text("0::/svc\n")
    (own / "cgroup.controllers").write_text("cpu memory pids\n")
    (own / "cgroup.subtree_control").write_text("\n")
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n4242\n")
    refused = Limits("auto", proc=proc, server_pids=lambda: frozenset({os.getpid()}))
    assert refused.method == "watchdog" and "4242" in refused.why  # not ours: left alone
    assert not (own / "kernelserver-server").exists()
    taken = Limits("auto", proc=proc, server_pids=lambda: frozenset({os.getpid(), 4242}))
    assert taken.method == "cgroup v2"
    assert (own / "kernelserver-server" / "cgroup.procs").read_text() == "4242"  # the last moved
    assert (own / "cgroup.subtree_control").read_text() == "+memory"
    base = own / f"kernelserver-{os.getpid()}"
    assert (base / "cgroup.subtree_control").read_text() == "+memory"
    group = taken.group("a/b c", 300 << 20)
    made = next(p for p in base.iterdir() if p.is_dir())
    assert made.name.startswith("ns-a_b_c-")
    assert (made / "memory.max").read_text() == str(300 << 20)
    assert (made / "memory.oom.group").read_text() == "1"
    (made / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    group.arm()
    assert group.exceeded(1) is None
    (made / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n")
    (made / "memory.peak").write_text(str(301 << 20))
    assert group.exceeded(1) == 301 << 20


@pytest.fixture(scope="module")
def culling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("culling"), env={"KERNELSERVER_CULL_IDLE_AFTER": "2"})
    yield live
    live.stop()


def test_an_idle_namespace_is_culled_and_its_history_stays(culling: LiveServer) -> None:
    created = post(culling, "/env/create", {"id": "sleepy"}).json()
    assert created["cull_idle_after"] == 2  # the server's default
    pid = post(culling, "/env/get", {"id": "sleepy"}).json()["pid"]
    assert run(culling, "sleepy", "print('remember me')")["status"] == "ok"
    assert wait_until(lambda: post(culling, "/env/get", {"id": "sleepy"}).status_code == 404, 15)
    assert wait_until(lambda: not pid_alive(pid), 10)  # its worker, and its memory, are gone
    gone = post(culling, "/env/get", {"id": "sleepy"}).json()["error"]["message"]
    assert "idle" in gone and "cull_idle_after" in gone and "/env/history?id=sleepy" in gone
    history = requests.get(culling.url + "/env/history", params={"id": "sleepy"},
                           headers=culling.headers, timeout=10).json()["executions"]
    assert [row["execution_count"] for row in history] == [1]
    recorded = requests.get(culling.url + "/env/execution", params={"id": "sleepy", "n": 1},
                            headers=culling.headers, timeout=10).json()
    assert recorded["stdout"] == "remember me\n"
    assert post(culling, "/env/create", {"id": "sleepy"}).status_code == 201
    assert run(culling, "sleepy", "1")["execution_count"] == 2  # numbers go on


def test_a_busy_namespace_is_never_culled(culling: LiveServer) -> None:
    post(culling, "/env/create", {"id": "busy", "cull_idle_after": 1})
    started = time.monotonic()
    answer = run(culling, "busy", "import time\ntime.sleep(4)\n'done'")
    assert answer["status"] == "ok" and answer["result"]["text/plain"] == "'done'"
    assert time.monotonic() - started >= 4
    assert post(culling, "/env/get", {"id": "busy"}).status_code == 200  # idle for 0 s now
    assert wait_until(lambda: post(culling, "/env/get", {"id": "busy"}).status_code == 404, 10)


def test_a_namespace_may_opt_out_of_culling(culling: LiveServer) -> None:
    assert post(culling, "/env/create", {"id": "keeper", "cull_idle_after": 0}).json()[
        "cull_idle_after"] == 0
    time.sleep(4)  # a duration, not a wait: idle past the server's culling period
    assert post(culling, "/env/get", {"id": "keeper"}).json()["state"] == "idle"

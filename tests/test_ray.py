"""The ray backend against a real local Ray cluster (loopback only) and a real `kernelserver serve`.

One cluster for the module (a head with 4 CPUs and 2 GPUs, Ray's own count: no GPU is needed to
place by GPUs), one server on it; a second node is added for placement and node loss, and the
last test takes the whole cluster down to show the server outlives it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from helpers import LiveServer, latest_execution, pid_alive, start_server, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(300)]

ray_cluster_utils = pytest.importorskip(
    "ray.cluster_utils", reason="the ray backend's tests need `pip install 'kernelserver[ray]'`")

# Every Ray process on 127.0.0.1: Ray binds the machine's external address otherwise (this switch,
# meant for laptops, makes it use loopback for the node address and every listening socket).
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    saved = {key: os.environ.get(key) for key in LOOPBACK}
    os.environ.update(LOOPBACK)
    made = _cluster({"num_cpus": 4, "num_gpus": 2, "include_dashboard": False,
                     "node_ip_address": "127.0.0.1"})
    try:
        yield made
    finally:
        made.shutdown()
        if GAVE_UP:  # what a start Ray gave up on left running: `ray stop` (all this user's)
            _ray_stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


GAVE_UP: list[str] = []  # starts Ray gave up on in this module (each was made once more)


def _ray_stop() -> None:
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"],
                   capture_output=True, timeout=120)


def _cluster(head: dict[str, Any]) -> Any:
    """A local cluster; its head started once more if Ray gave up on it (Ray waits a fixed 30 s
    for its raylet to register, which a machine busy with other work can take)."""
    try:
        return ray_cluster_utils.Cluster(initialize_head=True, head_node_args=head)
    except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
        if "timed out during startup" not in str(exc):
            raise
        GAVE_UP.append(str(exc))
        _ray_stop()  # what the failed start left running
        return ray_cluster_utils.Cluster(initialize_head=True, head_node_args=head)


def add_node(cluster: Any, num_cpus: int) -> Any:
    """A worker node on 127.0.0.1; started once more if Ray gave up on it (as _cluster)."""
    try:
        return cluster.add_node(num_cpus=num_cpus, node_ip_address="127.0.0.1")
    except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
        if "timed out during startup" not in str(exc):
            raise
        GAVE_UP.append(str(exc))  # its processes stay until the module's cluster stops
        return cluster.add_node(num_cpus=num_cpus, node_ip_address="127.0.0.1")


def ray_server(tmp_path: Path, cluster: Any, **env: str) -> LiveServer:
    # The default start_timeout (60 s): on a busy machine an actor's worker takes seconds to start;
    # connecting to the cluster at start may take a while too.
    return start_server(tmp_path, "--backend", "ray", "--ray-address", cluster.address,
                        env={**LOOPBACK, **env}, up_within=120)


@pytest.fixture(scope="module")
def server(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # Patient: a namespace waits for a place while a test adds a node, which a busy machine
    # takes its time over (Ray alone may spend 30 s, then start it again).
    live = ray_server(tmp_path_factory.mktemp("ray"), cluster, KERNELSERVER_START_TIMEOUT="150")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def impatient(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A second server on the cluster that gives up on a place after 4 s: only for refusals."""
    live = ray_server(tmp_path_factory.mktemp("ray-impatient"), cluster, KERNELSERVER_START_TIMEOUT="4")
    yield live
    live.stop()


def post(server: LiveServer, path: str, body: dict[str, Any], timeout: float = 60) -> requests.Response:
    return requests.post(server.url + path, json=body, headers=server.headers, timeout=timeout)


def run(server: LiveServer, namespace: str, code: str, **extra: Any) -> dict[str, Any]:
    answer: dict[str, Any] = post(server, "/execute", {"id": namespace, "code": code, **extra}).json()
    return answer


def test_cells_run_on_the_cluster_and_keep_their_state(server: LiveServer) -> None:
    created = post(server, "/env/create", {"id": "basic"})
    assert created.status_code == 201, created.text
    assert run(server, "basic", "x = 41")["status"] == "ok"
    answer = run(server, "basic", "print('hello from the node')\nx + 1")
    assert answer["stdout"] == "hello from the node\n" and answer["result"] == {"text/plain": "42"}
    info = post(server, "/env/get", {"id": "basic"}).json()
    assert info["node"]["node_ip"] == "127.0.0.1" and info["node"]["node_id"]
    assert pid_alive(info["pid"]) and info["memory_rss"] > 0
    assert {"name": "x", "type": "int", "repr": "41"} in info["variables"]
    history = requests.get(server.url + "/env/history", params={"id": "basic"},
                           headers=server.headers, timeout=10).json()["executions"]
    assert [row["execution_count"] for row in history] == [1, 2]


def test_ipython_syntax_and_display_updates_on_the_node(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "ipy"})
    answer = run(server, "ipy", "!echo from the node\nh = display('one', display_id=True)\n"
                                "h.update('two')\nfrom IPython.display import clear_output\n"
                                "display('cleared')\nclear_output(wait=True)\nprint('last')")
    assert answer["status"] == "ok", answer
    assert (answer["stdout"], answer["displays"]) == ("last\n", []), answer
    answer = run(server, "ipy", "!echo again\nh = display('one', display_id=True)\nh.update('two')")
    assert (answer["stdout"], answer["displays"]) == ("again\n", [{"text/plain": "'two'"}]), answer


def test_output_streams_live(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "stream"})
    code = "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')"
    started = time.monotonic()
    seen: list[tuple[float, dict[str, Any]]] = []
    with requests.post(server.url + "/execute", json={"id": "stream", "code": code, "stream": True},
                       headers=server.headers, stream=True, timeout=60) as response:
        for line in response.iter_lines():
            if line:
                seen.append((time.monotonic() - started, json.loads(line)))
    first = next(at for at, event in seen if event.get("text") == "first\n")
    assert seen[-1][0] - first > 1.0, seen  # while the cell slept its 1.5 s, not with its end
    assert seen[-1][1]["event"] == "result" and seen[-1][1]["status"] == "ok"
    assert "".join(e.get("text", "") for _, e in seen if e["event"] == "stdout") == "first\nsecond\n"


def test_interrupt_reaches_a_cell_on_the_node(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "stop-me"})
    answers: list[dict[str, Any]] = []
    code = "import time\nprint('started', flush=True)\nwhile True:\n    time.sleep(0.01)"
    runner = threading.Thread(target=lambda: answers.append(run(server, "stop-me", code)))
    runner.start()
    assert wait_until(lambda: post(server, "/env/get", {"id": "stop-me"}).json()["state"] == "busy", 10)
    # the cell runs its loop on the node: it has printed what it prints first
    assert wait_until(lambda: latest_execution(server, "stop-me").get("stdout") == "started\n", 10)
    started = time.monotonic()
    assert post(server, "/env/interrupt", {"id": "stop-me"}).json()["interrupted"] is True
    runner.join(15)
    assert answers and answers[0]["status"] == "interrupted", answers
    assert answers[0]["stdout"] == "started\n"
    assert time.monotonic() - started < 5
    assert run(server, "stop-me", "'still here'")["result"] == {"text/plain": "'still here'"}


def test_an_interrupt_right_after_the_cell_is_accepted_is_not_lost(server: LiveServer) -> None:
    # The interrupt may reach the actor before the cell does: it is kept for the cell, which
    # then never runs (issue 22). Few rounds: each costs a few Ray calls.
    post(server, "/env/create", {"id": "race"})
    for i in range(15):
        n = run(server, "race", "import time; time.sleep(30)", wait=0)["execution_count"]
        assert post(server, "/env/interrupt", {"id": "race"}).json()["interrupted"] is True, i
        final = requests.get(server.url + "/env/execution", headers=server.headers, timeout=60,
                             params={"id": "race", "n": n, "wait": 15}).json()
        assert final["status"] == "interrupted", (i, final)
    assert post(server, "/env/interrupt", {"id": "race"}).json()["interrupted"] is False


def test_a_cell_stuck_past_its_timeout_is_killed_with_its_output_kept(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "stuck"})
    run(server, "stuck", "kept = 1")
    code = ("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('before', flush=True)\n"
            "while True:\n    pass")
    answer = run(server, "stuck", code, timeout=1)
    assert answer["status"] == "timeout" and answer["restarted"] is True, answer
    assert answer["stdout"] == "before\n"
    assert "did not stop" in answer["error"]["evalue"]
    assert run(server, "stuck", "'kept' in globals()")["result"] == {"text/plain": "False"}


@pytest.mark.parametrize(("code", "how"), [
    ("print('last words')\nimport os\nos._exit(3)", "exited with code 3"),
    ("print('last words')\nimport ctypes\nctypes.string_at(0)", "killed by SIGSEGV"),
])
def test_a_crash_is_reported_with_its_output_and_reason(server: LiveServer, code: str, how: str) -> None:
    post(server, "/env/create", {"id": "crash"})
    answer = run(server, "crash", code)
    assert answer["error"]["ename"] == "WorkerDied" and how in answer["error"]["evalue"], answer
    assert answer["stdout"] == "last words\n" and answer["restarted"] is True
    assert run(server, "crash", "1 + 1")["result"] == {"text/plain": "2"}


def test_delete_gives_the_memory_back(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "big"})
    run(server, "big", "blob = b'x' * (400 << 20)")
    info = post(server, "/env/get", {"id": "big"}).json()
    assert info["memory_rss"] > 400 << 20
    assert post(server, "/env/delete", {"id": "big"}).status_code == 200
    assert wait_until(lambda: not pid_alive(info["pid"]), 10)


def test_gpus_are_placed_one_namespace_each_and_a_third_waits(server: LiveServer,
                                                             impatient: LiveServer) -> None:
    try:
        devices = []
        for name in ("gpu-a", "gpu-b"):
            created = post(server, "/env/create", {"id": name, "resources": {"num_gpus": 1}})
            assert created.status_code == 201, created.text
            seen = run(server, name, "import os\nos.environ['CUDA_VISIBLE_DEVICES']")["result"]["text/plain"]
            assert post(server, "/env/get", {"id": name}).json()["cuda_visible_devices"] == seen.strip("'")
            devices.append(seen)
        assert len(set(devices)) == 2  # different devices
        # Both GPUs held (by the other server's namespaces: one cluster): refused after its 4 s.
        started = time.monotonic()
        refused = post(impatient, "/env/create", {"id": "gpu-c", "resources": {"num_gpus": 1}})
        assert refused.status_code == 503, refused.text
        message = refused.json()["error"]["message"]
        assert "no node of the cluster had room" in message and "1 GPU" in message
        assert "0 of 2 GPU" in message and "within 4 s (start_timeout)" in message
        assert time.monotonic() - started > 3.5
        # One waiting while another is deleted starts as soon as the GPU is free.
        answers: list[requests.Response] = []
        waiter = threading.Thread(target=lambda: answers.append(
            post(server, "/env/create", {"id": "gpu-c", "resources": {"num_gpus": 1}})))
        waiter.start()
        # Waiting for a place: listed as starting (the create holds it until a GPU is free).
        assert wait_until(lambda: any(env["id"] == "gpu-c" and env["state"] == "starting" for env in
                                      requests.get(server.url + "/env/list", headers=server.headers,
                                                   timeout=10).json()["envs"]), 10)
        post(server, "/env/delete", {"id": "gpu-a"})
        waiter.join(60)
        assert answers and answers[0].status_code == 201, answers[0].text if answers else "no answer"
        kernel = requests.get(server.url + "/api/kernels/gpu-c", headers=server.headers, timeout=10)
        assert kernel.json()["kernelserver"]["resources"] == {"num_gpus": 1.0}
    finally:  # the GPUs go back whatever happened, or every later test waits for one
        for name in ("gpu-a", "gpu-b", "gpu-c"):
            post(server, "/env/delete", {"id": name})


def test_a_namespace_without_gpus_sees_none_and_gets_its_cpus(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "cpu-only", "resources": {"num_cpus": 2}})
    seen = run(server, "cpu-only", "import os\n(os.environ.get('CUDA_VISIBLE_DEVICES'), "
                                   "os.environ.get('OMP_NUM_THREADS'))")
    assert seen["result"] == {"text/plain": "('', '2')"}


def test_jupyter_kernels_take_resources_from_env(server: LiveServer) -> None:
    started = requests.post(server.url + "/api/kernels", headers=server.headers, timeout=60,
                            json={"name": "python3", "env": {"KERNEL_GPUS": "1", "KERNEL_CPUS": "1"}})
    assert started.status_code == 201, started.text
    model = started.json()
    assert model["kernelserver"]["resources"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert model["kernelserver"]["node"]["node_ip"] == "127.0.0.1"
    requests.delete(server.url + f"/api/kernels/{model['id']}", headers=server.headers, timeout=30)


def test_info_and_check_report_the_cluster(server: LiveServer) -> None:
    cluster = requests.get(server.url + "/info", headers=server.headers, timeout=60).json()["cluster"]
    assert cluster["total"]["GPU"] == 2 and cluster["total"]["CPU"] >= 4
    assert [node["node_ip"] for node in cluster["nodes"] if node["alive"]][0] == "127.0.0.1"
    done = subprocess.run([sys.executable, "-m", "kernelserver.cli", "check", "--url", server.url,
                           "--gpu", "--json"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KERNELSERVER_TOKEN": server.token})
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["check"]: row for row in json.loads(done.stdout)["checks"]}
    assert rows["cluster"]["ok"] and "1 node(s)" in rows["cluster"]["found"]
    assert "of 2 GPU free" in rows["cluster"]["found"]
    assert rows["gpu"]["ok"] and "2 in the cluster" in rows["gpu"]["found"]


def test_the_client_and_the_cli_ask_for_resources(server: LiveServer) -> None:
    from kernelserver.client import Client

    with Client(server.url, server.token) as client:
        namespace = client.namespace("from-client", num_gpus=1, memory="256M")
        seen = namespace.run("import os\nos.environ['CUDA_VISIBLE_DEVICES']").result
        assert seen is not None and seen["text/plain"] in ("'0'", "'1'")
    info = post(server, "/env/get", {"id": "from-client"}).json()
    assert info["resources"] == {"num_gpus": 1.0, "memory": 256 << 20}
    assert info["memory_limit"] == 256 << 20
    post(server, "/env/delete", {"id": "from-client"})
    done = subprocess.run([sys.executable, "-m", "kernelserver.cli", "exec", "--url", server.url,
                           "--id", "from-cli", "--cpus", "2", "--gpus", "0",
                           "import os; print(os.environ['OMP_NUM_THREADS'])"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KERNELSERVER_TOKEN": server.token})
    assert done.returncode == 0 and done.stdout == "2\n", done.stdout + done.stderr
    assert post(server, "/env/get", {"id": "from-cli"}).json()["resources"] == {"num_cpus": 2.0,
                                                                                "num_gpus": 0.0}
    post(server, "/env/delete", {"id": "from-cli"})


def test_a_lost_node_is_reported_and_the_namespace_waits_for_a_place(server: LiveServer,
                                                                      cluster: Any) -> None:
    assert post(server, "/env/create", {"id": "near"}).status_code == 201
    assert run(server, "near", "y = 7")["status"] == "ok"
    node = add_node(cluster, 8)
    try:
        cluster.wait_for_nodes()
        # Only the new node has 6 CPUs free: the namespace lands there.
        created = post(server, "/env/create", {"id": "far", "resources": {"num_cpus": 6}})
        assert created.status_code == 201, created.text
        info = post(server, "/env/get", {"id": "far"}).json()
        head_id = post(server, "/env/get", {"id": "near"}).json()["node"]["node_id"]
        assert info["node"]["node_id"] != head_id
        answers: list[dict[str, Any]] = []
        runner = threading.Thread(target=lambda: answers.append(run(
            server, "far", "import time\nprint('on the far node', flush=True)\ntime.sleep(60)")))
        runner.start()
        assert wait_until(lambda: post(server, "/env/get", {"id": "far"}).json()["state"] == "busy", 30)
        # the cell runs on the far node: it has printed what it prints first
        assert wait_until(lambda: latest_execution(server, "far").get("stdout") == "on the far node\n", 30)
    finally:
        cluster.remove_node(node)
    runner.join(90)
    assert answers, "the cell never ended"
    answer = answers[0]
    assert answer["error"]["ename"] == "WorkerDied" and "lost" in answer["error"]["evalue"], answer
    assert answer["stdout"] == "on the far node\n"
    # No node has 6 CPUs now: the next cell waits for a place, and runs when a node joins.
    again: list[Any] = []

    def wait_for_a_place() -> None:
        try:  # the cell waits up to start_timeout (150 s) for a node, then answers
            again.append(post(server, "/execute", {"id": "far", "code": "'placed again'"},
                              timeout=200).json())
        except requests.RequestException as exc:
            again.append(exc)

    waiter = threading.Thread(target=wait_for_a_place)
    waiter.start()
    assert wait_until(lambda: latest_execution(server, "far").get("status") == "running", 30)
    assert run(server, "near", "y")["result"] == {"text/plain": "7"}  # the server goes on meanwhile
    assert not again
    node = add_node(cluster, 8)
    try:
        waiter.join(200)
        assert again, "the cell never found its place"
        assert again[0]["result"] == {"text/plain": "'placed again'"}, again[0]
        assert "was lost after the last cell" in again[0]["stderr"]
        assert post(server, "/env/get", {"id": "far"}).json()["node"]["node_id"] != head_id
    finally:
        post(server, "/env/delete", {"id": "far"})
        cluster.remove_node(node)


def test_a_stop_logs_no_stack_dump_and_no_error(cluster: Any, tmp_path: Path) -> None:
    live = ray_server(tmp_path, cluster)
    try:
        assert post(live, "/env/create", {"id": "bye"}).status_code == 201
    finally:
        live.stop(timeout=30)
    output = live.output()
    assert live.proc.returncode == 0, output
    assert "SIGTERM received" not in output and "[ERROR]" not in output, output


def test_without_ray_the_backend_is_one_clear_line(tmp_path: Path) -> None:
    # A Python that cannot import ray: a sitecustomize hiding it (None in sys.modules is how
    # Python marks a module as not there).
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    done = subprocess.run([sys.executable, "-m", "kernelserver.cli", "serve", "--backend", "ray",
                           "--data-dir", str(tmp_path / "data")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(hide)}, timeout=60)
    assert done.returncode != 0
    assert "pip install 'kernelserver[ray]'" in done.stderr and "Traceback" not in done.stderr


def test_the_server_outlives_its_cluster(cluster: Any, tmp_path: Path) -> None:
    # The module's cluster, last: this test takes it down (a second head would cost a start).
    own = cluster
    # Ray's default is to end a driver whose head is gone for 60 s; 3 s here, which the server
    # must override, or it would die while this test waits.
    live = ray_server(tmp_path, own, RAY_gcs_rpc_server_reconnect_timeout_s="3")
    try:
        assert run(live, "default", "1 + 1")["result"] == {"text/plain": "2"}
        own.shutdown()
        time.sleep(6)  # a duration, not a wait: the server must outlive 3 s (twice) without its head
        assert live.proc.poll() is None, live.output()[-2000:]
        timed: dict[str, float] = {}
        started = time.monotonic()
        assert requests.get(live.url + "/health", timeout=10).status_code == 503
        timed["health"] = time.monotonic() - started
        refused = post(live, "/env/create", {"id": "nowhere"}, timeout=30)
        timed["create"] = time.monotonic() - started - timed["health"]
        assert refused.status_code == 503 and "does not answer" in refused.json()["error"]["message"]
        assert requests.get(live.url + "/env/list", headers=live.headers, timeout=30).status_code == 200
        assert timed["health"] < 3 and timed["create"] < 10, timed
    finally:
        started = time.monotonic()
        live.stop(timeout=30)
        assert time.monotonic() - started < 15

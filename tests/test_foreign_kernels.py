"""Installed Jupyter kernels of other languages as namespaces (issue 25, part 3): bash_kernel and
IRkernel behind a real server, over the v1 HTTP API, NDJSON streaming and the Jupyter WebSocket.

bash_kernel comes with the test extra (conftest.py registers its kernelspec for the run); IRkernel
is Debian's r-cran-irkernel, which .ci/run installs. Where one is missing its tests skip and say how.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from jupyter_client.kernelspec import KernelSpecManager

from kernelserver.backends.jupyterkernel import LenientKernelSpec

from helpers import TOKEN, LiveServer, pid_alive, server_pid, start_server, wait_until
from jupyter_ws import KernelClient, of_type

pytestmark = pytest.mark.slow

SPECS = KernelSpecManager(kernel_spec_class=LenientKernelSpec).find_kernel_specs()
HOW_TO_INSTALL = {
    "bash": "pip install bash_kernel (conftest.py registers its kernelspec)",
    "ir": "apt-get install --no-install-recommends r-cran-irkernel",
}


@dataclass(frozen=True)
class Lang:
    """The same cells in one kernel's language."""

    name: str
    language: str  # its kernel_info's language_info name
    prints: str  # prints "hi"
    fails: str
    ename: str
    evalue: str
    sleeps: str  # prints "started", then sleeps 60 s
    # (bash: the process that prints is the one that sleeps, so an interrupt seen after the print
    # cannot land between the two commands, where bash once let it pass)
    define: str  # x = 41
    check: str  # prints "set" or "unset"
    child: str  # starts `sleep 300` in the background and prints its pid


LANGS = {
    "bash": Lang("bash", "bash", "echo hi", "false", "Error", "1",
                 "sh -c 'echo started; exec sleep 60'", "x=41",
                 '[ -n "$x" ] && echo set || echo unset', "sleep 300 & echo $!"),
    "ir": Lang("ir", "R", 'cat("hi\\n")', 'stop("boom")', "ERROR", "boom",
               'cat("started\\n"); Sys.sleep(60)', "x <- 41",
               'cat(if (exists("x")) "set\\n" else "unset\\n")',
               'cat(system("sleep 300 >/dev/null 2>&1 & echo $!", intern = TRUE), "\\n")'),
}


def missing(name: str) -> str | None:
    """Why that kernel cannot run here, or None."""
    if name not in SPECS:
        return f"the {name} kernelspec is not installed: {HOW_TO_INSTALL[name]}"
    if name == "ir" and shutil.which("R") is None:
        return f"R is not installed: {HOW_TO_INSTALL[name]}"
    return None


ALL = [pytest.param(lang, id=name, marks=pytest.mark.skipif(missing(name) is not None,
                                                            reason=str(missing(name))))
       for name, lang in LANGS.items()]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("foreign"), env={"KERNELSERVER_START_TIMEOUT": "90"})
    yield live
    live.stop()


def post(server: LiveServer, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(server.url + path, json=body, headers=server.headers, timeout=120)


def run(server: LiveServer, namespace: str, code: str, **extra: Any) -> dict[str, Any]:
    answer: dict[str, Any] = post(server, "/execute", {"id": namespace, "code": code, **extra}).json()
    return answer


def create(server: LiveServer, lang: Lang) -> str:
    namespace = f"{lang.name}-{uuid.uuid4().hex[:8]}"
    created = post(server, "/env/create", {"id": namespace, "kernel": lang.name})
    assert created.status_code == 201, created.text
    assert (created.json()["kernel"], created.json()["memory_limit"]) == (lang.name, 0)
    return namespace


@pytest.mark.parametrize("lang", ALL)
def test_cells_run_over_http_with_errors_and_history(server: LiveServer, lang: Lang) -> None:
    namespace = create(server, lang)
    answer = run(server, namespace, lang.prints)
    assert (answer["status"], answer["stdout"].replace("\r\n", "\n")) == ("ok", "hi\n"), answer
    assert run(server, namespace, lang.define)["status"] == "ok"
    assert "set" in run(server, namespace, lang.check)["stdout"]  # state persists between requests
    failed = run(server, namespace, lang.fails)
    assert failed["status"] == "error", failed
    assert failed["error"]["ename"] == lang.ename and lang.evalue in failed["error"]["evalue"], failed
    assert "\x1b[" not in failed["error"]["traceback"]  # the kernel's colours are dropped
    history = requests.get(server.url + "/env/history", params={"id": namespace}, headers=server.headers,
                           timeout=30).json()["executions"]
    assert [row["status"] for row in history] == ["ok", "ok", "ok", "error"], history
    got = post(server, "/env/get", {"id": namespace}).json()
    assert (got["kernel"], got["syntax"]) == (lang.name, lang.language.lower()), got
    assert got["language_info"]["name"] == lang.language and pid_alive(got["pid"])


@pytest.mark.parametrize("lang", ALL)
def test_output_streams_as_ndjson(server: LiveServer, lang: Lang) -> None:
    namespace = create(server, lang)
    with requests.post(server.url + "/execute", json={"id": namespace, "code": lang.prints, "stream": True},
                       headers=server.headers, stream=True, timeout=120) as response:
        events = [json.loads(line) for line in response.iter_lines() if line]
    text = "".join(e["text"] for e in events if e["event"] == "stdout").replace("\r\n", "\n")
    assert text == "hi\n", events
    assert events[-1]["event"] == "result" and events[-1]["status"] == "ok", events[-1]


@pytest.mark.parametrize("lang", ALL)
def test_interrupt_restart_and_delete(server: LiveServer, lang: Lang) -> None:
    namespace = create(server, lang)
    run(server, namespace, lang.define)
    n = post(server, "/execute", {"id": namespace, "code": lang.sleeps, "wait": 0}).json()["execution_count"]

    def execution() -> dict[str, Any]:
        found: dict[str, Any] = requests.get(server.url + "/env/execution", headers=server.headers,
                                             params={"id": namespace, "n": n}, timeout=30).json()
        return found

    assert wait_until(lambda: "started" in execution()["stdout"], 30)
    assert post(server, "/env/interrupt", {"id": namespace}).json()["interrupted"] is True
    final = requests.get(server.url + "/env/execution", headers=server.headers, timeout=60,
                         params={"id": namespace, "n": n, "wait": 30}).json()
    assert final["status"] == "interrupted", final
    assert "set" in run(server, namespace, lang.check)["stdout"]  # the interrupt kept the namespace
    pid = post(server, "/env/get", {"id": namespace}).json()["pid"]
    assert post(server, "/env/restart", {"id": namespace}).status_code == 200
    assert "unset" in run(server, namespace, lang.check)["stdout"]  # restarted empty
    assert not pid_alive(pid)
    child = int(run(server, namespace, lang.child)["stdout"].split()[-1])
    assert pid_alive(child)
    assert post(server, "/env/delete", {"id": namespace}).status_code == 200
    assert not pid_alive(child)  # the kernel's own children go with it


@pytest.mark.parametrize("lang", ALL)
def test_the_jupyter_websocket_speaks_the_kernels_language(server: LiveServer, lang: Lang) -> None:
    started = post(server, "/api/kernels", {"name": lang.name})
    assert started.status_code == 201 and started.json()["name"] == lang.name, started.text
    kernel_id = started.json()["id"]
    client = KernelClient(server.url, kernel_id, server.token)
    try:
        reply, _ = client.request("kernel_info_request")
        assert reply["content"]["language_info"]["name"] == lang.language, reply
        reply, seen = client.execute(lang.prints)
        assert reply["content"]["status"] == "ok"
        text = "".join(m["content"]["text"] for m in of_type(seen, "stream")).replace("\r\n", "\n")
        assert text == "hi\n", seen
        reply, seen = client.execute(lang.fails)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == lang.ename
        assert lang.evalue in of_type(seen, "error")[0]["content"]["evalue"]
        client.execute(lang.define)
        sleeping = client.send("execute_request", {"code": lang.sleeps, "silent": False})
        client.until(lambda m: m["msg_type"] == "stream" and "started" in m["content"]["text"])
        client.send("interrupt_request", {}, channel="control")
        seen = client.until_idle(sleeping["msg_id"], timeout=60)
        replies = [m for m in of_type(seen, "execute_reply") if m["parent_header"]["msg_id"]
                   == sleeping["msg_id"]]
        assert replies and replies[0]["content"]["status"] == "error", seen
        assert replies[0]["content"]["ename"] == "KeyboardInterrupt"
        restarted = requests.post(f"{server.url}/api/kernels/{kernel_id}/restart", headers=server.headers,
                                  timeout=120)
        assert restarted.status_code == 200, restarted.text
        _, seen = client.execute(lang.check)
        assert "unset" in "".join(m["content"]["text"] for m in of_type(seen, "stream")), seen
    finally:
        client.close()
        requests.delete(f"{server.url}/api/kernels/{kernel_id}", headers=server.headers, timeout=60)


@pytest.mark.parametrize("lang", ALL)
def test_listed_probed_and_checked(server: LiveServer, lang: Lang) -> None:
    specs = requests.get(server.url + "/api/kernelspecs", headers=server.headers, timeout=30).json()
    spec = specs["kernelspecs"][lang.name]["spec"]
    assert spec["language"] == lang.language and spec["metadata"]["kernelserver"]["source"] == "jupyter"
    kernels = {k["name"]: k for k in requests.get(server.url + "/kernels", headers=server.headers,
                                                   timeout=60).json()["kernels"]}
    assert kernels[lang.name]["starts"] is True and kernels[lang.name]["python"] is None
    probe = requests.get(server.url + "/info", params={"kernel": lang.name}, headers=server.headers,
                         timeout=120).json()["probe"]
    assert probe["kernel"]["language"] == lang.language, probe
    env = {"KERNELSERVER_URL": server.url, "KERNELSERVER_TOKEN": server.token, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "kernelserver.cli", "kernels"], capture_output=True,
                          text=True, timeout=120, env=env)
    row = next(line for line in done.stdout.splitlines() if line.startswith(lang.name + " "))
    assert "jupyter" in row and f"{lang.language} kernel: " in row, done.stdout + done.stderr
    done = subprocess.run([sys.executable, "-m", "kernelserver.cli", "check", "--kernel", lang.name,
                           "--code", lang.prints], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{lang.language} " in done.stdout
    done = subprocess.run([sys.executable, "-m", "kernelserver.cli", "check", "--kernel", lang.name,
                           "--require", "numpy"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1 and "Python packages" in done.stdout, done.stdout + done.stderr


def test_what_a_jupyter_kernel_cannot_promise_is_refused(server: LiveServer, tmp_path: Path) -> None:
    name = "bash" if "bash" in SPECS else "ir"
    if missing(name):
        pytest.skip(str(missing(name)))
    refused = post(server, "/env/create", {"id": "limited", "kernel": name, "memory_limit": "1G"})
    assert refused.status_code == 400 and "memory limit" in refused.json()["error"]["message"]
    refused = post(server, "/env/create", {"id": "plain", "kernel": name, "syntax": "python"})
    assert refused.status_code == 400 and "syntax" in refused.json()["error"]["message"]
    assert post(server, "/env/get", {"id": "limited"}).status_code == 404  # nothing left behind


def test_a_kernel_that_dies_as_it_starts_says_so(tmp_path: Path) -> None:
    specs = tmp_path / "jupyter" / "kernels" / "quits"
    specs.mkdir(parents=True)
    (specs / "kernel.json").write_text(json.dumps({
        "argv": ["sh", "-c", "echo leaving >&2; exit 7"], "display_name": "Quits", "language": "sh"}))
    live = start_server(tmp_path, env={"JUPYTER_PATH": str(tmp_path / "jupyter")})
    try:
        refused = post(live, "/env/create", {"id": "q", "kernel": "quits"})
        assert refused.status_code == 503, refused.text
        assert "the quits kernel exited with code 7 as it started" in refused.json()["error"]["message"]
        assert post(live, "/env/get", {"id": "q"}).status_code == 404
    finally:
        live.stop()


def test_the_inprocess_backend_refuses_a_jupyter_kernel(make_app: Any) -> None:
    name = "bash" if "bash" in SPECS else "ir"
    client = make_app(backend="inprocess").test_client()
    refused = client.post("/env/create", json={"id": "j", "kernel": name},
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status_code == 400, refused.get_data(as_text=True)
    assert "is a Jupyter kernel, which the process backend starts" in refused.get_json()["error"]["message"]


@pytest.mark.parametrize("lang", ALL)
def test_a_kernel_dies_with_a_killed_server(tmp_path: Path, lang: Lang) -> None:
    # A SIGKILLed kernel cannot clean up (R leaves its session's Rtmp* dir): it does so in tmp_path.
    (scratch := tmp_path / "tmp").mkdir()
    live = start_server(tmp_path, env={"TMPDIR": str(scratch)})
    try:
        namespace = create(live, lang)
        kernel = post(live, "/env/get", {"id": namespace}).json()["pid"]
        assert pid_alive(kernel)
        os.kill(server_pid(live.data_dir), signal.SIGKILL)  # the process that started the kernel
        assert wait_until(lambda: not pid_alive(kernel), 10), "the kernel outlived its server"
    finally:
        live.stop()


@pytest.mark.parametrize("lang", ALL)
def test_a_stopped_server_ends_its_kernels_and_what_they_started(tmp_path: Path, lang: Lang) -> None:
    live = start_server(tmp_path)
    try:
        children = []
        for _ in range(2):  # the second is closed while the server's exit already runs
            namespace = create(live, lang)
            children.append(int(run(live, namespace, lang.child)["stdout"].split()[-1]))
        assert all(pid_alive(child) for child in children)
    finally:
        live.stop()  # SIGTERM, as a service manager stops it
    assert not [child for child in children if pid_alive(child)], "a kernel's child outlived the server"

"""Namespaces in other Python environments (issue 25, part 1 and 2): a real server whose kernels are
a virtualenv this test makes, another CPython version, a Python kernelspec, a conda-like env dir,
and an interpreter too old for the worker. kernelserver's own worker runs in each.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from helpers import LiveServer, pid_alive, start_server, wait_until
from jupyter_ws import KernelClient

pytestmark = pytest.mark.slow


def other_cpython() -> str | None:
    """A CPython of another minor version than this one (.ci/run requires 3.10, 3.12, 3.13)."""
    for version in ("3.12", "3.13", "3.10"):
        if sys.version_info[:2] == tuple(map(int, version.split("."))):
            continue
        found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
        if found:
            return found[-1]
    return None


@pytest.fixture(scope="module")
def envs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A bare virtualenv with a module the server's env lacks; a fake old Python; a kernelspec
    and a conda-like envs/ dir pointing at the virtualenv."""
    root = tmp_path_factory.mktemp("envs")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "only_here.py").write_text("WHERE = 'the test venv'\n")
    # An interpreter that says it is 3.8: a sitecustomize tells the bootstrap so.
    fake = root / "fake38"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text("import sys\nsys.version_info = (3, 8, 0, 'final', 0)\n")
    old = root / "old-python"
    old.write_text(f"#!/bin/sh\nPYTHONPATH={fake} exec {base} \"$@\"\n")
    old.chmod(0o755)
    # A kernelspec as `python -m ipykernel install --name from-spec` writes it, and a bash one.
    specs = root / "jupyter" / "kernels"
    (specs / "from-spec").mkdir(parents=True)
    (specs / "from-spec" / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (from a kernelspec)", "language": "python"}))
    (specs / "not-python").mkdir()
    (specs / "not-python" / "kernel.json").write_text(json.dumps({
        "argv": ["bash", "-c", "true"], "display_name": "Bash", "language": "bash"}))
    # A conda root as MAMBA_ROOT_PREFIX has it: envs/<name>/bin/python.
    (root / "mamba" / "envs").mkdir(parents=True)
    subprocess.run([base, "-m", "venv", "--without-pip", str(root / "mamba" / "envs" / "proj")],
                   check=True, timeout=120)
    return {"root": root, "python": python, "old": old, "site": Path(site)}


@pytest.fixture(scope="module")
def server(envs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    kernels = f"venv={envs['python']},old={envs['old']},missing=/nowhere/bin/python"
    other = other_cpython()
    if other:
        kernels += f",other-cpython={other}"
    live = start_server(tmp_path_factory.mktemp("kernels"), env={
        "KERNELSERVER_KERNELS": kernels, "JUPYTER_PATH": str(envs["root"] / "jupyter"),
        "MAMBA_ROOT_PREFIX": str(envs["root"] / "mamba")})
    yield live
    live.stop()


def post(server: LiveServer, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(server.url + path, json=body, headers=server.headers, timeout=90)


def run(server: LiveServer, namespace: str, code: str, **extra: Any) -> dict[str, Any]:
    answer: dict[str, Any] = post(server, "/execute", {"id": namespace, "code": code, **extra}).json()
    return answer


def test_a_namespace_runs_in_the_environment_it_names(server: LiveServer, envs: dict[str, Path]) -> None:
    created = post(server, "/env/create", {"id": "in-venv", "kernel": "venv"})
    assert created.status_code == 201 and created.json()["kernel"] == "venv", created.text
    answer = run(server, "in-venv", "import sys, only_here\n(sys.executable, only_here.WHERE)")
    assert answer["result"] == {"text/plain": repr((str(envs["python"]), "the test venv"))}, answer
    # Not the server's packages: flask is the server's, not the venv's.
    answer = run(server, "in-venv", "import flask")
    assert answer["error"]["ename"] == "ModuleNotFoundError", answer
    answer = run(server, "in-venv", "import sys\n[p for p in sys.path if 'site-packages' in p]")
    assert answer["result"] == {"text/plain": repr([str(envs["site"])])}, answer
    assert post(server, "/env/get", {"id": "in-venv"}).json()["kernel"] == "venv"


def test_interrupts_timeouts_and_crashes_there_as_here(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "venv-life", "kernel": "venv"})
    n = post(server, "/execute", {"id": "venv-life", "code": "import time\nprint('sleeping', flush=True)\n"
                                  "time.sleep(60)", "wait": 0}).json()["execution_count"]
    assert wait_until(lambda: requests.get(server.url + "/env/execution", headers=server.headers,
                                           params={"id": "venv-life", "n": n}, timeout=10
                                           ).json()["stdout"] == "sleeping\n", 20)
    assert post(server, "/env/interrupt", {"id": "venv-life"}).json()["interrupted"] is True
    final = requests.get(server.url + "/env/execution", headers=server.headers, timeout=30,
                         params={"id": "venv-life", "n": n, "wait": 20}).json()
    assert final["status"] == "interrupted" and final["error"]["ename"] == "KeyboardInterrupt", final
    answer = run(server, "venv-life", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                      "while True:\n    pass", timeout=1)
    assert answer["status"] == "timeout" and answer["restarted"] is True, answer
    answer = run(server, "venv-life", "print('last words', flush=True)\nimport os\nos._exit(3)")
    assert answer["error"]["ename"] == "WorkerDied" and "exited with code 3" in answer["error"]["evalue"]
    assert answer["stdout"] == "last words\n"
    assert run(server, "venv-life", "import sys\nsys.prefix")["result"]["text/plain"].endswith("venv'")


def test_the_memory_limit_and_delete_hold_there(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "venv-hog", "kernel": "venv", "memory_limit": "256M"})
    answer = run(server, "venv-hog", "print('before the hog')\nhog = b'\\x01' * (600 << 20)")
    assert answer["error"]["ename"] == "MemoryLimitExceeded", answer
    assert answer["stdout"] == "before the hog\n"
    child = run(server, "venv-hog", "import subprocess\np = subprocess.Popen(['sleep', '100'])\np.pid")
    pid = int(child["result"]["text/plain"])
    assert pid_alive(pid)
    assert post(server, "/env/delete", {"id": "venv-hog"}).status_code == 200
    assert not pid_alive(pid)  # delete waits for the namespace's descendants


def test_another_cpython_version_runs_the_worker(server: LiveServer) -> None:
    other = other_cpython()
    assert other, "no CPython of another version here: .ci/run requires 3.10, 3.12 and 3.13"
    post(server, "/env/create", {"id": "other-version", "kernel": "other-cpython"})
    answer = run(server, "other-version", "import sys\nsys.version_info[:2]\n")
    wanted = subprocess.run([other, "-c", "import sys; print(tuple(sys.version_info[:2]))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert answer["result"] == {"text/plain": wanted}, answer
    answer = run(server, "other-version", "import time\nfor i in range(3):\n    print(i, flush=True)")
    assert answer["stdout"] == "0\n1\n2\n"


def test_kernel_info_gives_the_environments_python(server: LiveServer) -> None:
    other = other_cpython()
    assert other, "no CPython of another version here: .ci/run requires 3.10, 3.12 and 3.13"
    wanted = subprocess.run([other, "-c", "import platform; print(platform.python_version())"],
                            capture_output=True, text=True, check=True).stdout.strip()
    started = post(server, "/api/kernels", {"name": "other-cpython"})
    assert started.status_code == 201, started.text
    client = KernelClient(server.url, started.json()["id"], server.token)
    try:
        reply, _ = client.request("kernel_info_request")
        assert reply["content"]["language_info"]["version"] == wanted, reply["content"]
        assert wanted in reply["content"]["banner"]
    finally:
        client.close()
        requests.delete(f"{server.url}/api/kernels/{started.json()['id']}", headers=server.headers,
                        timeout=60)


def test_what_cannot_start_says_why(server: LiveServer) -> None:
    refused = post(server, "/env/create", {"id": "too-old", "kernel": "old"})
    assert refused.status_code == 503, refused.text
    assert "Python 3.8 is older than 3.10" in refused.json()["error"]["message"]
    refused = post(server, "/env/create", {"id": "gone", "kernel": "missing"})
    assert refused.status_code == 503 and "/nowhere/bin/python" in refused.json()["error"]["message"]
    unknown = post(server, "/env/create", {"id": "nope", "kernel": "no-such-env"})
    assert unknown.status_code == 400
    message = unknown.json()["error"]["message"]
    assert "no kernel 'no-such-env'" in message and "'venv'" in message and "'python3'" in message
    assert post(server, "/env/get", {"id": "too-old"}).status_code == 404  # nothing left behind


def test_kernelspecs_and_conda_envs_are_found(server: LiveServer, envs: dict[str, Path]) -> None:
    specs = requests.get(server.url + "/api/kernelspecs", headers=server.headers, timeout=10).json()
    found = specs["kernelspecs"]
    assert specs["default"] == "python3"
    assert found["from-spec"]["spec"]["display_name"] == "Python (from a kernelspec)"
    assert found["conda-proj"]["spec"]["language"] == "python"
    # A kernel of another language is not run by our worker: it is a Jupyter kernel, run as itself.
    assert found["not-python"]["spec"]["metadata"]["kernelserver"]["source"] == "jupyter"
    assert found["not-python"]["spec"]["language"] == "bash"
    assert {"python3", "venv", "old", "missing"} <= set(found)
    # Jupyter's API starts a kernel by its kernelspec's name; the model says which.
    started = requests.post(server.url + "/api/kernels", json={"name": "from-spec"},
                            headers=server.headers, timeout=60)
    assert started.status_code == 201 and started.json()["name"] == "from-spec", started.text
    kernel_id = started.json()["id"]
    answer = run(server, kernel_id, "import only_here\nonly_here.WHERE")
    assert answer["result"] == {"text/plain": "'the test venv'"}
    missing = requests.post(server.url + "/api/kernels", json={"name": "nope"},
                            headers=server.headers, timeout=60)
    assert missing.status_code == 404 and "from-spec" in missing.json()["message"]
    requests.delete(server.url + f"/api/kernels/{kernel_id}", headers=server.headers, timeout=30)
    created = post(server, "/env/create", {"id": "conda-ns", "kernel": "conda-proj"})
    assert created.status_code == 201, created.text
    answer = run(server, "conda-ns", "import sys\nsys.prefix")
    assert answer["result"] == {"text/plain": repr(str(envs["root"] / "mamba" / "envs" / "proj"))}


def cli(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kernelserver.cli", *args, "--url", server.url],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KERNELSERVER_TOKEN": server.token})


def test_the_cli_lists_kernels_checks_one_and_runs_in_one(server: LiveServer, envs: dict[str, Path]) -> None:
    listed = cli(server, "kernels", "--json")
    assert listed.returncode == 1, listed.stderr  # old and missing cannot start
    rows = {row["name"]: row for row in json.loads(listed.stdout)["kernels"]}
    assert rows["venv"]["starts"] and rows["venv"]["python"] == str(envs["python"])
    assert rows["venv"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert rows["python3"]["source"] == "server" and rows["from-spec"]["source"] == "kernelspec"
    assert not rows["old"]["starts"] and "older than 3.10" in rows["old"]["why"]
    assert not rows["missing"]["starts"] and "/nowhere/bin/python" in rows["missing"]["why"]
    table = cli(server, "kernels")
    assert "NAME" in table.stdout and "conda-proj" in table.stdout
    checked = cli(server, "check", "--kernel", "venv", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    python_row = next(r for r in json.loads(checked.stdout)["checks"] if r["check"] == "python")
    assert str(envs["python"]) in python_row["found"]
    ran = cli(server, "exec", "--id", "cli-venv", "--kernel", "venv", "import sys; print(sys.prefix)")
    assert ran.returncode == 0 and ran.stdout.strip().endswith("venv"), ran.stdout + ran.stderr


def test_a_bad_kernels_setting_stops_the_server_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "kernelserver.cli", "serve", "--data-dir",
                           str(tmp_path), "--kernel", "no-equals-sign"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and "NAME=PYTHON" in done.stderr and "Traceback" not in done.stderr


def test_a_fork_server_outlives_the_namespace_that_started_it(server: LiveServer) -> None:
    # Linux's parent-death signal follows the *thread* that forked: an environment's fork server,
    # started from the thread of its first namespace, used to die with that namespace and take
    # every worker it forked along (a restarted fork server of the server's own likewise).
    def ppid(namespace: str) -> str:
        return str(run(server, namespace, "import os\nos.getppid()")["result"]["text/plain"])

    post(server, "/env/create", {"id": "fs-first", "kernel": "venv"})
    forkserver = ppid("fs-first")
    post(server, "/env/create", {"id": "fs-second", "kernel": "venv"})
    run(server, "fs-second", "kept = 'here'")
    assert post(server, "/env/delete", {"id": "fs-first"}).status_code == 200
    answer = run(server, "fs-second", "kept")
    assert answer["result"] == {"text/plain": "'here'"} and not answer["restarted"], answer
    post(server, "/env/create", {"id": "fs-third", "kernel": "venv"})
    assert ppid("fs-second") == ppid("fs-third") == forkserver

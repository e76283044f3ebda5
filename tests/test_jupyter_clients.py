"""Jupyter's own clients, nobody's code but Jupyter's, driving kernelserver namespaces as kernels:
jupyter_server with --gateway-url (the chain JupyterLab uses) and JupyterLab's @jupyterlab/services."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from helpers import LiveServer, jupyter_gateway
from jupyter_ws import KernelClient, of_type

pytestmark = pytest.mark.slow

JS = Path(__file__).resolve().parent / "js"


@pytest.fixture
def jupyter_server(server: LiveServer, tmp_path: Path) -> Iterator[str]:
    """A real jupyter_server whose kernels live in kernelserver (`--gateway-url`)."""
    with jupyter_gateway(tmp_path, server.url, server.token, "js-token") as url:
        yield url


def test_jupyter_server_runs_cells_in_kernelserver_through_gateway_url(server: LiveServer,
                                                                       jupyter_server: str) -> None:
    headers = {"Authorization": "token js-token"}
    started = requests.post(jupyter_server + "/api/kernels", json={"name": "python3"}, headers=headers,
                            timeout=60)
    assert started.status_code == 201, started.text
    kernel_id = started.json()["id"]
    # The kernel jupyter_server started is a kernelserver namespace.
    namespaces = requests.get(server.url + "/env/list", headers=server.headers, timeout=10).json()
    assert kernel_id in [ns["id"] for ns in namespaces["envs"]]
    specs = requests.get(jupyter_server + "/api/kernelspecs", headers=headers, timeout=30).json()
    assert "kernelserver" in specs["kernelspecs"]["python3"]["spec"]["display_name"]
    # Through jupyter_server's own channels WebSocket, which relays to kernelserver's.
    client = KernelClient(jupyter_server, kernel_id, "js-token")
    reply, seen = client.execute("import os\nprint('pid', os.getpid())\n1 + 1")
    assert reply["content"]["status"] == "ok"
    assert of_type(seen, "execute_result")[0]["content"]["data"] == {"text/plain": "2"}
    pid = int(of_type(seen, "stream")[0]["content"]["text"].split()[1])
    info = requests.post(server.url + "/env/get", json={"id": kernel_id}, headers=server.headers,
                         timeout=10).json()
    assert info["pid"] == pid  # the cell ran in the namespace's worker
    client.close()
    listed = requests.get(jupyter_server + "/api/kernels", headers=headers, timeout=30).json()
    assert [k["id"] for k in listed] == [kernel_id]
    assert requests.delete(f"{jupyter_server}/api/kernels/{kernel_id}", headers=headers,
                           timeout=30).status_code == 204
    after = requests.get(server.url + "/env/list", headers=server.headers, timeout=10).json()
    assert kernel_id not in [ns["id"] for ns in after["envs"]]


def _lab_client_missing() -> str | None:
    """Why @jupyterlab/services cannot run here, or None; installs it (npm ci) when it can."""
    if shutil.which("node") is None:
        return "Node.js is not installed (CI installs it; see .ci/run)"
    if not (JS / "node_modules" / "@jupyterlab" / "services").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            return "npm is not installed"
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS, capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            return f"npm ci in tests/js failed: {done.stderr[-400:]}"
    return None


def test_jupyterlab_services_starts_a_kernel_and_runs_cells(server: LiveServer) -> None:
    missing = _lab_client_missing()
    if missing:
        pytest.skip(missing)
    done = subprocess.run(["node", str(JS / "lab_client.js"), server.url, server.token],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(next(line for line in done.stdout.splitlines()
                             if line.startswith("REPORT "))[len("REPORT "):])
    assert report["info"] == {"protocol": "5.3", "language": "python", "implementation": "kernelserver"}
    assert report["first"] == {"status": "ok", "ename": None, "outputs": [
        ["stream", "hello from lab\n"], ["display", "'shown'"], ["result", "42"]]}
    assert report["failing"]["status"] == "error" and report["failing"]["ename"] == "ZeroDivisionError"
    assert report["afterRestart"]["ename"] == "NameError"  # restarted empty
    assert report["interrupted"]["ename"] == "KeyboardInterrupt"
    assert report["listedAfterShutdown"] == 0
    namespaces = requests.get(server.url + "/env/list", headers=server.headers, timeout=10).json()
    assert report["id"] not in [ns["id"] for ns in namespaces["envs"]]


def test_the_readmes_ci_script_runs_as_written(server: LiveServer, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("<!-- jupyter-ci-script -->")[1].split("<!-- /jupyter-ci-script -->")[0]
    script = tmp_path / "ci_check.py"
    script.write_text(block.split("```python\n", 1)[1].rsplit("```", 1)[0])
    env = {**os.environ, "KERNELSERVER_URL": server.url, "KERNELSERVER_TOKEN": server.token}
    passed = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.startswith("python 3.") and "environment check: passed" in passed.stdout
    script.write_text(script.read_text().replace("== 45", "== 46"))
    failed = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert failed.returncode == 1 and "AssertionError" in failed.stderr
    assert "environment check: FAILED" in failed.stdout
    # Each run cleaned up its kernel.
    envs = requests.get(server.url + "/env/list", headers=server.headers, timeout=10).json()["envs"]
    assert not [ns for ns in envs if len(ns["id"]) == 36]

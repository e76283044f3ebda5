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
from typing import Any

import pytest
import requests

from helpers import LiveServer, jupyter_gateway, start_server
from jupyter_ws import KernelClient, of_type

pytestmark = pytest.mark.slow

JS = Path(__file__).resolve().parent / "js"


# Cells in IPython syntax as a notebook has them, each with what a Jupyter front end must be sent.
MARKDOWN_CELL = 'from IPython.display import display, Markdown; display(Markdown("**b**"))'
SHELL_CELL = "!echo hi"
UPDATE_CELL = 'h = display("one", display_id=True); h.update("two")'
Outputs = list[tuple[str, dict[str, Any]]]  # a cell's output messages: (msg_type, content), in order


@pytest.fixture
def jupyter_server(server: LiveServer, tmp_path: Path) -> Iterator[str]:
    """A real jupyter_server whose kernels live in kernelserver (`--gateway-url`)."""
    with jupyter_gateway(tmp_path, server.url, server.token, "js-token") as url:
        yield url


def assert_ipython_outputs(markdown: Outputs, shell: Outputs, update: Outputs) -> None:
    """The outputs of MARKDOWN_CELL, SHELL_CELL and UPDATE_CELL are what JupyterLab renders:
    markdown, the command's stdout, one display replaced in place."""
    shown_markdown = [(t, c.get("data", {}).get("text/markdown")) for t, c in markdown]
    assert shown_markdown == [("display_data", "**b**")], markdown
    assert [(t, c["name"], c["text"]) for t, c in shell] == [("stream", "stdout", "hi\n")], shell
    assert [t for t, _ in update] == ["display_data", "update_display_data"], update
    (_, shown), (_, updated) = update
    display_id = shown["transient"]["display_id"]
    assert display_id and updated["transient"] == {"display_id": display_id}
    assert shown["data"]["text/plain"] == "'one'" and updated["data"]["text/plain"] == "'two'"


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
    # IPython syntax and display updates come through jupyter_server's relay as they left kernelserver.
    outputs = {}
    for name, code in [("markdown", MARKDOWN_CELL), ("shell", SHELL_CELL), ("update", UPDATE_CELL)]:
        reply, seen = client.execute(code)
        assert reply["content"]["status"] == "ok", reply["content"]
        outputs[name] = [(m["msg_type"], m["content"]) for m in seen if m["msg_type"] in
                         ("stream", "display_data", "update_display_data", "execute_result", "error")]
    assert_ipython_outputs(**outputs)
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


def lab_client(base_url: str, token: str, *args: str) -> dict[str, Any]:
    """The report of tests/js/lab_client.js run against base_url (skips where Node is missing)."""
    missing = _lab_client_missing()
    if missing:
        pytest.skip(missing)
    done = subprocess.run(["node", str(JS / "lab_client.js"), base_url, token, *args],
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report: dict[str, Any] = json.loads(next(line for line in done.stdout.splitlines()
                                             if line.startswith("REPORT "))[len("REPORT "):])
    return report


def assert_lab_ipython_report(ipython: dict[str, Any]) -> None:
    """lab_client.js's report.ipython: each cell ran ok and sent what assert_ipython_outputs expects."""
    for name, cell in ipython.items():
        assert (cell["status"], cell["ename"]) == ("ok", None), (name, cell)
    assert_ipython_outputs(**{name: [(m["type"], m["content"]) for m in cell["messages"]]
                              for name, cell in ipython.items()})


def test_jupyterlab_services_starts_a_kernel_and_runs_cells(server: LiveServer) -> None:
    report = lab_client(server.url, server.token)
    assert report["info"] == {"protocol": "5.3", "language": "python", "implementation": "kernelserver"}
    assert report["first"] == {"status": "ok", "ename": None, "outputs": [
        ["stream", "hello from lab\n"], ["display", "'shown'"], ["result", "42"]]}
    assert report["failing"]["status"] == "error" and report["failing"]["ename"] == "ZeroDivisionError"
    assert report["afterRestart"]["ename"] == "NameError"  # restarted empty
    assert report["interrupted"]["ename"] == "KeyboardInterrupt"
    assert report["interrupted"]["outputs"][0] == ["stream", "sleeping\n"]
    assert_lab_ipython_report(report["ipython"])
    assert report["listedAfterShutdown"] == 0
    namespaces = requests.get(server.url + "/env/list", headers=server.headers, timeout=10).json()
    assert report["id"] not in [ns["id"] for ns in namespaces["envs"]]


def test_jupyterlab_services_through_jupyter_server_gets_ipython_outputs(server: LiveServer,
                                                                         jupyter_server: str) -> None:
    # JupyterLab's whole chain short of the page: its client library -> jupyter_server -> kernelserver.
    report = lab_client(jupyter_server, "js-token", "--ipython-only")
    assert report["info"]["implementation"] == "kernelserver"
    assert_lab_ipython_report(report["ipython"])
    assert report["listedAfterShutdown"] == 0
    namespaces = requests.get(server.url + "/env/list", headers=server.headers, timeout=10).json()
    assert report["id"] not in [ns["id"] for ns in namespaces["envs"]]


def test_jupyterlab_services_starts_a_kernel_by_another_name(tmp_path: Path) -> None:
    # A second environment (issue 25): a virtualenv the server's worker runs in, by its name.
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(tmp_path / "env")], check=True, timeout=120)
    python = tmp_path / "env" / "bin" / "python"
    live = start_server(tmp_path, env={"KERNELSERVER_KERNELS": f"second-env={python}"})
    try:
        report = lab_client(live.url, live.token, "--kernel=second-env")
    finally:
        live.stop()
    assert report["name"] == "second-env"
    assert report["cell"]["status"] == "ok"
    assert report["cell"]["outputs"] == [["stream", f"{python}\n"]]


def test_jupyterlab_services_starts_a_jupyter_kernel_of_another_language(server: LiveServer) -> None:
    # bash_kernel (the test extra; conftest.py registers its kernelspec), run as itself.
    report = lab_client(server.url, server.token, "--kernel=bash", "x=41; echo $((x + 1))")
    assert (report["name"], report["language"]) == ("bash", "bash")
    assert report["cell"]["status"] == "ok"
    assert [kind for kind, _ in report["cell"]["outputs"]] == ["stream"]
    assert report["cell"]["outputs"][0][1].strip() == "42"


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

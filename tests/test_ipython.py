"""IPython syntax in namespaces, end to end: a real `kernelserver serve`, over HTTP and over the
Jupyter WebSocket (issue 24). Each row of the issue's table, the interrupt of a shell escape,
%pip install of a local wheel, display updates and clear_output in every wire format, and
`syntax: "python"` for the exact old semantics.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from helpers import LiveServer, pid_alive, process_tree, start_server, wait_until
from jupyter_ws import KernelClient, of_type

pytest.importorskip("IPython", reason="IPython syntax needs `pip install 'kernelserver[notebook]'`")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("ipython"))
    yield live
    live.stop()


def post(server: LiveServer, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(server.url + path, json=body, headers=server.headers, timeout=120)


def run(server: LiveServer, code: str, namespace: str = "ipy", **extra: Any) -> dict[str, Any]:
    post(server, "/env/create", {"id": namespace})
    answer: dict[str, Any] = post(server, "/execute", {"id": namespace, "code": code, **extra}).json()
    return answer


def events(server: LiveServer, code: str, namespace: str = "ipy") -> list[dict[str, Any]]:
    post(server, "/env/create", {"id": namespace})
    with requests.post(server.url + "/execute", json={"id": namespace, "code": code, "stream": True},
                       headers=server.headers, stream=True, timeout=120) as response:
        return [json.loads(line) for line in response.iter_lines() if line]


# -- the table: what Jupyter users type first --

def test_shell_escapes_run_and_capture(server: LiveServer, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("")
    answer = run(server, "!echo hi && echo to-err >&2")
    assert (answer["status"], answer["stdout"], answer["stderr"]) == ("ok", "hi\n", "to-err\n"), answer
    answer = run(server, f"files = !ls {tmp_path}\nfiles")
    assert answer["result"]["text/plain"] == "['a.txt', 'b.txt']"
    assert run(server, "!exit 3")["status"] == "ok"  # as in IPython: the code goes to _exit_code
    assert run(server, "_exit_code")["result"] == {"text/plain": "3"}


def test_line_and_cell_magics(server: LiveServer) -> None:
    answer = run(server, "%timeit -n 2 -r 1 sum(range(100))")
    assert answer["status"] == "ok" and "per loop" in answer["stdout"], answer
    answer = run(server, "%%time\nx = sum(range(1000))")
    assert "Wall time" in answer["stdout"], answer
    answer = run(server, "%%bash\necho from bash $((6 * 7))")
    assert answer["stdout"] == "from bash 42\n", answer
    for code in ("%matplotlib inline", "%load_ext autoreload", "%autoreload 2"):
        answer = run(server, code)
        assert answer["status"] == "ok" and answer["stderr"] == "", (code, answer)
    answer = run(server, "%env KS_TEST_VAR=seen\nimport os\nos.environ['KS_TEST_VAR']")
    assert answer["result"] == {"text/plain": "'seen'"}
    assert "KS_TEST_VAR" not in os.environ  # the namespace's process only


def test_cd_moves_only_that_namespace(server: LiveServer, tmp_path: Path) -> None:
    assert run(server, f"%cd {tmp_path}", namespace="mover")["stdout"] == f"{tmp_path}\n"
    where = {name: run(server, "import os\nos.getcwd()", namespace=name)["result"]["text/plain"]
             for name in ("mover", "stayer")}
    assert where["mover"] == repr(str(tmp_path)) and where["stayer"] != where["mover"]


def test_help_with_question_marks(server: LiveServer) -> None:
    answer = run(server, "print?")
    assert answer["status"] == "ok" and "Docstring" in answer["stdout"] and "print" in answer["stdout"]
    run(server, "def documented(x):\n    'Says hello.'\n    return x")
    answer = run(server, "documented??")
    assert "Says hello." in answer["stdout"] and "return x" in answer["stdout"]  # ?? shows the source


def test_rich_displays_from_ipython_display(server: LiveServer) -> None:
    answer = run(server, "from IPython.display import display, Markdown, HTML, JSON, Math\n"
                         "display(Markdown('**b**'))\ndisplay(HTML('<i>i</i>'))\n"
                         "display(Math(r'x^2'))\ndisplay(JSON({'k': 1}))")
    assert answer["status"] == "ok" and answer["stdout"] == "", answer
    kinds = [sorted(k for k in d if k != "text/plain") for d in answer["displays"]]
    assert kinds == [["text/markdown"], ["text/html"], ["text/latex"], ["application/json"]]
    assert answer["displays"][0]["text/markdown"] == "**b**"
    assert answer["displays"][3]["application/json"] == {"k": 1}


def test_get_ipython_and_the_output_history(server: LiveServer) -> None:
    assert run(server, "get_ipython() is not None", namespace="hist")["result"] == {"text/plain": "True"}
    first = run(server, "6 * 7", namespace="hist")
    n = first["execution_count"]
    run(server, "'second'", namespace="hist")
    answer = run(server, f"(_, __, Out[{n}], In[{n}])", namespace="hist")
    assert answer["result"] == {"text/plain": "('second', 42, 42, '6 * 7')"}, answer
    # What the shell put in the namespace is not the user's: /env/get's variables leave it out.
    names = {v["name"] for v in post(server, "/env/get", {"id": "hist"}).json()["variables"]}
    assert not names & {"In", "Out", "get_ipython", "exit", "quit", "_"}, names


def test_libraries_that_check_for_ipython_choose_what_works_here(server: LiveServer) -> None:
    # tqdm.auto picks its notebook widget only under an IPKernelApp; without comms here it
    # must pick the text bar, which streams with \r (a widget would fail without ipywidgets).
    answer = run(server, "from tqdm.auto import tqdm\nfor _ in tqdm(range(3)): pass\n"
                         "type(get_ipython()).__name__")
    assert answer["result"] == {"text/plain": "'ZMQInteractiveShell'"}, answer
    assert "3/3" in answer["stderr"] and "\r" in answer["stderr"], answer


def test_tracebacks_show_the_cell_not_ipython(server: LiveServer) -> None:
    answer = run(server, "def inner():\n    return 1 / 0\n%time inner()")
    assert answer["status"] == "error" and answer["error"]["ename"] == "ZeroDivisionError", answer
    traceback = answer["error"]["traceback"]
    assert "return 1 / 0" in traceback and "IPython" not in traceback, traceback
    assert "site-packages" not in run(server, "!true\n1/0")["error"]["traceback"]


def test_top_level_await_and_the_servers_execution_count(server: LiveServer) -> None:
    answer = run(server, "import asyncio\nawait asyncio.sleep(0)\n'awaited'", namespace="count")
    assert answer["result"] == {"text/plain": "'awaited'"}
    n = run(server, "!true", namespace="count")["execution_count"]
    answer = run(server, f"(len(In) - 1, In[{n}])", namespace="count")
    assert answer["execution_count"] == n + 1
    assert answer["result"] == {"text/plain": f"({n + 1}, \"get_ipython().system('true')\")"}


def test_the_output_cap_holds_for_a_shell_escape(server: LiveServer) -> None:
    answer = run(server, "!yes 0123456789 | head -c 3000000", output_cap_bytes=100_000)
    assert answer["truncated"] is True and len(answer["stdout"]) < 200_000


# -- interrupts and processes --

def test_an_interrupt_stops_a_shell_escape_and_its_processes(server: LiveServer) -> None:
    post(server, "/env/create", {"id": "sleepy"})
    pid = post(server, "/env/get", {"id": "sleepy"}).json()["pid"]
    n = post(server, "/execute", {"id": "sleepy", "code": "!sleep 100", "wait": 0}).json()["execution_count"]

    def sleeping() -> list[int]:
        found = []
        for child in process_tree(pid) - {pid}:
            try:
                if Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"sleep\x00100"):
                    found.append(child)
            except OSError:
                pass
        return found

    assert wait_until(lambda: bool(sleeping()), 20)
    children = sleeping()
    assert post(server, "/env/interrupt", {"id": "sleepy"}).json()["interrupted"] is True
    final = requests.get(server.url + "/env/execution", params={"id": "sleepy", "n": n, "wait": 20},
                         headers=server.headers, timeout=30).json()
    assert final["status"] == "interrupted", final
    assert wait_until(lambda: not any(pid_alive(child) for child in children), 10)
    assert run(server, "'after'", namespace="sleepy")["result"] == {"text/plain": "'after'"}


def test_output_of_a_shell_escape_streams_live(server: LiveServer) -> None:
    seen: list[dict[str, Any]] = []
    got_first = threading.Event()
    post(server, "/env/create", {"id": "live"})
    code = "!echo first; sleep 1; echo second"
    with requests.post(server.url + "/execute", json={"id": "live", "code": code, "stream": True},
                       headers=server.headers, stream=True, timeout=60) as response:
        for line in response.iter_lines():
            if line:
                event = json.loads(line)
                if event.get("text") == "first\n" and not seen:
                    got_first.set()
                seen.append(event)
    assert got_first.is_set()  # the first line came as its own event, before the second
    assert [e["text"] for e in seen if e["event"] == "stdout"] == ["first\n", "second\n"]


def _wheel(tmp_path: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel built by hand (no network, no build backend)."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VALUE = {version!r}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": ("Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                               "Tag: py3-none-any\n")}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    wheel = tmp_path / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def test_pip_install_goes_into_the_namespaces_environment(server: LiveServer, tmp_path: Path) -> None:
    name = "ks_tiny_wheel_for_tests"
    wheel = _wheel(tmp_path, name, "0.3")
    try:
        answer = run(server, f"%pip install --no-index --no-deps {wheel}", namespace="pip")
        assert answer["status"] == "ok" and f"Successfully installed {name.replace('_', '-')}" in \
            answer["stdout"].replace("_", "-"), answer
        answer = run(server, f"import {name}, sys\n({name}.VALUE, sys.prefix)", namespace="pip")
        assert answer["result"] == {"text/plain": repr(("0.3", sys.prefix))}, answer
    finally:
        run(server, f"%pip uninstall -y {name}", namespace="pip")


# -- display ids and clear_output, in the buffered answer and the stream --

UPDATE = ("import time\nh = display('one', display_id=True)\nprint('between')\n"
          "h.update('two')\ndisplay('other', display_id='fixed')\n"
          "from IPython.display import update_display\nupdate_display('three', display_id=h.display_id)")


def test_display_updates_leave_the_final_state_in_the_answer(server: LiveServer) -> None:
    answer = run(server, UPDATE)
    assert answer["status"] == "ok" and answer["stdout"] == "between\n", answer
    assert answer["displays"] == [{"text/plain": "'three'"}, {"text/plain": "'other'"}]


def test_display_updates_are_events_in_the_stream(server: LiveServer) -> None:
    seen = [e for e in events(server, UPDATE) if e["event"] in ("display", "update_display", "stdout")]
    first = seen[0]
    assert first["event"] == "display" and first["data"] == {"text/plain": "'one'"}
    handle = first["display_id"]
    assert [(e["event"], e.get("display_id"), e.get("data"), e.get("text")) for e in seen[1:]] == [
        ("stdout", None, None, "between\n"),
        ("update_display", handle, {"text/plain": "'two'"}, None),
        ("display", "fixed", {"text/plain": "'other'"}, None),
        ("update_display", handle, {"text/plain": "'three'"}, None)]


def test_clear_output_keeps_what_comes_after(server: LiveServer) -> None:
    code = ("from IPython.display import clear_output\nprint('gone')\ndisplay('gone too')\n"
            "clear_output()\nprint('kept')\nclear_output(wait=True)\ndisplay('last')")
    answer = run(server, code)
    assert (answer["stdout"], answer["displays"]) == ("", [{"text/plain": "'last'"}]), answer
    seen = [(e["event"], e.get("wait")) for e in events(server, code) if e["event"] != "result"]
    assert seen == [("stdout", None), ("display", None), ("clear_output", False), ("stdout", None),
                    ("clear_output", True), ("display", None)]


# -- over the Jupyter WebSocket --

def _kernel(server: LiveServer) -> str:
    started = requests.post(server.url + "/api/kernels", json={"name": "python3"},
                            headers=server.headers, timeout=60)
    assert started.status_code == 201, started.text
    return str(started.json()["id"])


@pytest.fixture
def client(server: LiveServer) -> Iterator[KernelClient]:
    kernel = _kernel(server)
    connected = KernelClient(server.url, kernel, server.token)
    yield connected
    connected.close()
    requests.delete(server.url + f"/api/kernels/{kernel}", headers=server.headers, timeout=30)


def test_jupyter_gets_streams_markdown_updates_and_clears(client: KernelClient) -> None:
    reply, seen = client.execute("!echo hi")
    assert reply["content"]["status"] == "ok"
    assert [m["content"] for m in of_type(seen, "stream")] == [{"name": "stdout", "text": "hi\n"}]
    _, seen = client.execute("from IPython.display import display, Markdown\ndisplay(Markdown('**b**'))")
    data = of_type(seen, "display_data")[0]["content"]["data"]
    assert data["text/markdown"] == "**b**"
    _, seen = client.execute(UPDATE)
    shown = of_type(seen, "display_data")
    handle = shown[0]["content"]["transient"]["display_id"]
    assert shown[1]["content"]["transient"] == {"display_id": "fixed"}
    updates = of_type(seen, "update_display_data")
    assert [(u["content"]["transient"]["display_id"], u["content"]["data"]) for u in updates] == [
        (handle, {"text/plain": "'two'"}), (handle, {"text/plain": "'three'"})]
    _, seen = client.execute("from IPython.display import clear_output\nclear_output(wait=True)")
    assert [m["content"] for m in of_type(seen, "clear_output")] == [{"wait": True}]


def test_jupyter_interrupts_a_shell_escape(client: KernelClient) -> None:
    cell = client.send("execute_request", {"code": "!sleep 100"})
    client.until(lambda m: m["msg_type"] == "execute_input")
    reply, _ = client.request("interrupt_request", channel="control")
    assert reply["content"]["status"] == "ok"
    seen = client.until_idle(cell["msg_id"])
    assert of_type(seen, "execute_reply")[0]["content"]["status"] == "error"


# -- the old semantics, on request --

def test_syntax_python_keeps_plain_python(server: LiveServer) -> None:
    created = post(server, "/env/create", {"id": "plain", "syntax": "python"})
    assert created.status_code == 201 and created.json()["syntax"] == "python"
    assert post(server, "/env/get", {"id": "plain"}).json()["syntax"] == "python"
    answer = run(server, "!echo hi", namespace="plain")
    assert answer["error"]["ename"] == "SyntaxError", answer
    assert run(server, "'get_ipython' in dir(__builtins__) or 'get_ipython' in globals()",
               namespace="plain")["result"] == {"text/plain": "False"}
    assert run(server, "_ = 5\n_", namespace="plain")["result"] == {"text/plain": "5"}
    # Asked again with another syntax, an existing namespace keeps its own (as with its limits).
    again = post(server, "/env/create", {"id": "plain", "syntax": "ipython"})
    assert again.status_code == 200 and again.json()["syntax"] == "python"
    refused = post(server, "/env/create", {"id": "odd", "syntax": "ruby"})
    assert refused.status_code == 400 and "'ipython', 'python'" in refused.json()["error"]["message"]


def test_the_cli_and_the_client_choose_the_syntax(server: LiveServer) -> None:
    import subprocess

    from kernelserver.client import Client

    with Client(server.url, server.token) as connected:
        namespace = connected.namespace("from-client", syntax="python")
        assert namespace.run("1").ok
    assert post(server, "/env/get", {"id": "from-client"}).json()["syntax"] == "python"
    done = subprocess.run([sys.executable, "-m", "kernelserver.cli", "exec", "--url", server.url,
                           "--id", "from-cli", "--syntax", "python", "!echo hi"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KERNELSERVER_TOKEN": server.token})
    assert done.returncode == 1 and "SyntaxError" in done.stderr, done.stdout + done.stderr
    done = subprocess.run([sys.executable, "-m", "kernelserver.cli", "exec", "--url", server.url,
                           "!echo from-the-cli"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KERNELSERVER_TOKEN": server.token})
    assert done.returncode == 0 and done.stdout == "from-the-cli\n", done.stdout + done.stderr


def test_a_figures_value_comes_before_its_figure_as_in_ipykernel(client: KernelClient,
                                                                 server: LiveServer) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\n'the value'"
    _, seen = client.execute(code)
    order = [m["msg_type"] for m in seen if m["msg_type"] in ("execute_result", "display_data")]
    assert order == ["execute_result", "display_data"], order
    assert "image/png" in of_type(seen, "display_data")[0]["content"]["data"]
    _, seen = client.execute("'no figure'")  # the value once, as before
    assert [m["content"]["data"] for m in of_type(seen, "execute_result")] == [
        {"text/plain": "'no figure'"}]
    answer = run(server, code)  # the v1 answer is unchanged: the value, and the figure displayed
    assert answer["result"] == {"text/plain": "'the value'"}
    assert [sorted(d) for d in answer["displays"]] == [["image/png", "text/plain"]]

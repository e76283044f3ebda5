"""IPython syntax in a namespace: Executor(syntax="ipython") and kernelserver.runner.ipython, no server."""

from __future__ import annotations

import builtins
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import kernelserver
from kernelserver.results import Outcome
from kernelserver.runner import ipython
from kernelserver.runner.executor import Executor

REPO = Path(kernelserver.__file__).resolve().parents[1]


@dataclass
class Namespace:
    """An Executor with IPython syntax, as a worker holds it, and what its callbacks received."""

    executor: Executor
    shell: ipython.Shell
    displays: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    clears: list[bool] = field(default_factory=list)
    count: int = 0

    def run(self, source: str, execution_count: int | None = None) -> Outcome:
        """Run a cell: the server's execution_count, or the next one."""
        self.count = execution_count if execution_count is not None else self.count + 1
        return self.executor.run(source, self.count)

    def ok(self, source: str) -> Any:
        """Run a cell that must succeed; its result's text/plain (None without a result)."""
        outcome = self.run(source)
        assert outcome.status == "ok", outcome.error
        return outcome.result["text/plain"] if outcome.result else None


@pytest.fixture
def ns() -> Iterator[Namespace]:
    pytest.importorskip("IPython")
    displays: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def on_display(bundle: dict[str, Any], **extra: Any) -> None:
        displays.append((bundle, extra))

    clears: list[bool] = []
    executor = Executor(on_display=on_display, syntax="ipython", on_clear=clears.append)
    assert executor.shell is not None
    try:
        yield Namespace(executor, executor.shell, displays, clears)
    finally:
        executor.close()


def no_ipython_in(text: str) -> None:
    """No IPython internals and no kernelserver frame in a traceback: only the cells' frames (and
    %%time's code)."""
    assert "IPython" not in text and "site-packages" not in text and "traitlets" not in text, text
    assert "kernelserver" not in text.replace("kernelserver[notebook]", ""), text
    for filename in re.findall(r'File "([^"]+)"', text):
        assert filename.startswith(("<cell-", "<timed ")), text


# --- the pre-check and the transform ----------------------------------------------------------

@pytest.mark.parametrize(("source", "expected"), [
    ("1+1", False),
    ("x = 7 % 3\ny = '%d' % x", False),
    ("if a != b:\n    pass", False),
    ("s = 'why?'  # or not?", False),
    ("!ls", True),
    ("  !ls -l", True),
    ("files = !ls", True),
    ("x = %time f()", True),
    ("%%bash\necho hi", True),
    ("print?", True),
    ("print??", True),
    ("?print", True),
    ("for i in range(2):\n    %time i", True),
], ids=["arithmetic", "modulo", "not-equal", "question-in-string-and-comment", "bang",
        "indented-bang", "system-assign", "magic-assign", "cell-magic", "help-end", "help-end-2",
        "help-start", "magic-in-block"])
def test_the_pre_check_finds_ipython_syntax(source: str, expected: bool) -> None:
    assert ipython.uses_ipython_syntax(source) is expected


def test_a_plain_cell_is_returned_as_it_is() -> None:
    source = "\n".join(f"v{i} = f({i}) % 3 != 2  # line {i}" for i in range(50))
    assert ipython.transform(source) is source


def test_ipython_syntax_becomes_python() -> None:
    pytest.importorskip("IPython")
    assert ipython.transform("files = !ls") == "files = get_ipython().getoutput('ls')\n"
    assert ipython.transform("%%bash\necho hi") == (
        "get_ipython().run_cell_magic('bash', '', 'echo hi\\n')\n")


def test_importing_the_module_imports_no_ipython() -> None:
    probe = "import sys, kernelserver.runner.ipython\nprint('IPython' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         check=True, cwd=REPO).stdout
    assert out.strip() == "False"


def test_python_syntax_loads_none_of_the_ipython_package() -> None:
    probe = ("import sys\nfrom kernelserver.runner.executor import Executor\n"
             "ex = Executor()\nex.run('1+1', 1)\nex.close()\n"
             "print(sorted(m for m in sys.modules if m == 'IPython' or m.endswith('runner.ipython')"
             " or m.startswith(('IPython.', 'kernelserver.runner.ipython.'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


def test_python_syntax_is_plain_python() -> None:
    executor = Executor()
    try:
        assert executor.shell is None
        failed = executor.run("!ls", 1)
        assert failed.error is not None and failed.error.ename == "SyntaxError"
        assert executor.run("1 + 1;", 2).result == {"text/plain": "2"}  # no ';' rule
    finally:
        executor.close()
    with pytest.raises(ValueError, match="syntax"):
        Executor(syntax="ipython3")  # type: ignore[arg-type]


def test_without_ipython_a_cell_with_its_syntax_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "IPython", None)  # `import IPython` now fails
    assert not ipython.available()
    executor = Executor(syntax="ipython")  # falls back to plain Python
    try:
        assert executor.shell is None
        outcome = executor.run("x = 1\n!ls -l", 4)
        assert outcome.status == "error" and outcome.error is not None
        assert outcome.error.ename == "IPythonSyntaxError"
        assert outcome.error.evalue.startswith(ipython.INSTALL_HINT)  # " (<cell-4>, line 2)"
        assert "pip install 'kernelserver[notebook]'" in outcome.error.traceback
        assert 'File "<cell-4>", line 2' in outcome.error.traceback and "!ls -l" in outcome.error.traceback
        # Python that merely looks like it (a '%' starting a line of a string) still runs.
        sql = 'q = """\n%s\n""" % 5\nq.strip()'
        assert executor.run(sql, 5).result == {"text/plain": "'5'"}
        assert "x" not in executor.namespace  # the failed cell did not run
        with pytest.raises(ImportError, match="kernelserver\\[notebook\\]"):
            ipython.make_shell({}, lambda bundle, **extra: None)
    finally:
        executor.close()


# --- commands ---------------------------------------------------------------------------------

def test_bang_command_prints_to_the_namespace_streams(ns: Namespace,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert ns.ok("!echo hi; echo oops >&2") is None  # the command's status is no result
    out, err = capsys.readouterr()
    assert out == "hi\n" and err == "oops\n"
    assert ns.ok("!exit 3\n_exit_code") == "3"


def test_bang_command_expands_variables(ns: Namespace, capsys: pytest.CaptureFixture[str]) -> None:
    ns.ok("n = 21\n!echo $n {n * 2}")
    assert capsys.readouterr().out == "21 42\n"


class _Watching:
    """A stdout that reacts to a line: what proves output arrives while the command runs."""

    def __init__(self, line: str, then: Callable[[], None]) -> None:
        self.text = ""
        self._line, self._then = line, then

    def write(self, text: str) -> int:
        self.text += text
        if self._line in self.text:
            self._line = "\0never"
            self._then()
        return len(text)

    def flush(self) -> None:
        pass


def test_bang_output_arrives_while_the_command_runs(ns: Namespace, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    flag = tmp_path / "flag"
    stdout = _Watching("ready\n", flag.touch)
    monkeypatch.setattr(sys, "stdout", stdout)
    # The command waits (5 s at most) for a file the test makes only once it has read "ready":
    # held back until the end, the output would never let it finish early.
    ns.ok(f"!echo ready; for i in $(seq 500); do [ -e {flag} ] && break; sleep 0.01; done; "
          f"[ -e {flag} ] && echo seen")
    assert stdout.text == "ready\nseen\n"


def test_system_assign_gives_an_slist(ns: Namespace, tmp_path: Path) -> None:
    (tmp_path / "a.txt").touch()
    (tmp_path / "b.txt").touch()
    ns.executor.namespace["where"] = str(tmp_path)
    assert ns.ok("files = !ls $where\ntype(files).__name__, files") == "('SList', ['a.txt', 'b.txt'])"
    assert ns.ok("%sx echo one; echo two >&2") == "['one', 'two']"  # stderr with stdout


def test_cell_magic_bash(ns: Namespace, capsys: pytest.CaptureFixture[str]) -> None:
    ns.ok("%%bash\necho out\necho err >&2")
    assert capsys.readouterr() == ("out\n", "err\n")
    ns.ok("%%bash --out captured\necho kept")
    assert ns.executor.namespace["captured"] == "kept\n"
    failed = ns.run("%%bash\nexit 3")
    assert failed.status == "error" and failed.error is not None
    assert failed.error.ename == "CalledProcessError"  # IPython 9's %%script: non-zero raises
    no_ipython_in(failed.error.traceback)


def test_cell_magic_feeds_a_long_cell_while_reading(ns: Namespace,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    body = "x" * 300_000  # more than a pipe holds: written as the program reads, no deadlock
    ns.ok(f"%%script sh -c 'wc -c; echo done'\n{body}")
    assert capsys.readouterr().out.split() == ["300001", "done"]


@pytest.mark.parametrize("cell", ["!sleep {t}", "x = !sleep {t}", "%%bash\nsleep {t}\necho no"],
                         ids=["bang", "system-assign", "cell-magic"])
def test_interrupt_stops_the_command(ns: Namespace, cell: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    marker = "97.5312"  # a duration no other process here sleeps
    found: list[int] = []
    interrupted_at: list[float] = []

    def interrupt_once_it_runs() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not found:
            found.extend(_processes_running(marker))
            time.sleep(0.01)
        interrupted_at.append(time.monotonic())
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # as the worker's handler does for the running cell

    previous = signal.signal(signal.SIGINT, raise_interrupt)
    timer = threading.Thread(target=interrupt_once_it_runs)
    try:
        timer.start()
        outcome = ns.run(cell.format(t=marker))
        ended = time.monotonic()
    finally:
        timer.join(30)
        signal.signal(signal.SIGINT, previous)
    assert found, "the command never started"
    assert _in_tree_of(found[0], os.getpid()) is not False  # it was a descendant (None: gone now)
    assert outcome.status == "interrupted" and outcome.error is not None
    assert outcome.error.ename == "KeyboardInterrupt"
    no_ipython_in(outcome.error.traceback)
    assert ended - interrupted_at[0] < float(marker) / 10  # not the command's 97 s
    assert not os.path.exists(f"/proc/{found[0]}"), "the command outlived the interrupt"
    assert "no" not in capsys.readouterr().out


def _processes_running(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read() and int(entry) != os.getpid():
                        pids.append(int(entry))
            except OSError:
                pass
    return [pid for pid in pids if _in_tree_of(pid, os.getpid())]


def _in_tree_of(pid: int, root: int) -> bool | None:
    """Whether pid descends from root (None: pid is gone)."""
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return None
        if pid == root:
            return True
    return False


# --- magics -----------------------------------------------------------------------------------

def test_timeit_and_time(ns: Namespace, capsys: pytest.CaptureFixture[str]) -> None:
    ns.ok("%timeit -n1 -r1 pass")
    assert "per loop" in capsys.readouterr().out
    assert ns.ok("%%time\ntotal = sum(range(10))\ntotal") == "45"
    assert "Wall time" in capsys.readouterr().out


def test_cd_and_env_change_the_process(ns: Namespace, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(os.getcwd())  # put back after
    monkeypatch.setenv("KS_IPYSHELL_TEST", "before")
    ns.ok(f"%cd {tmp_path}")
    assert os.getcwd() == str(tmp_path)
    ns.ok("%env KS_IPYSHELL_TEST=after")
    assert os.environ["KS_IPYSHELL_TEST"] == "after"


def test_autoreload_sees_an_edited_module(ns: Namespace, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "ks_reloaded_mod.py"
    module.write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ks_reloaded_mod", raising=False)
    try:
        ns.ok("%load_ext autoreload\n%autoreload 2\nimport ks_reloaded_mod")
        assert ns.ok("ks_reloaded_mod.VALUE") == "1"
        module.write_text("VALUE = 2\n")
        later = time.time() + 10
        os.utime(module, (later, later))  # a new mtime even on a coarse clock
        assert ns.ok("ks_reloaded_mod.VALUE") == "2"  # reloaded by the pre_run_cell event
    finally:
        sys.modules.pop("ks_reloaded_mod", None)


def test_help_prints_to_stdout(ns: Namespace, capsys: pytest.CaptureFixture[str]) -> None:
    ns.ok("print?")
    out = capsys.readouterr().out
    assert "Docstring:" in out and "Prints the values to a stream" in out
    assert "\x1b[" not in out  # no terminal colours
    ns.ok("def documented():\n    'Says hello.'\ndocumented??")
    assert "Says hello." in capsys.readouterr().out


def test_matplotlib_inline_keeps_our_backend() -> None:
    pytest.importorskip("IPython")
    pytest.importorskip("matplotlib")
    # Its own interpreter: the backend is process state, not ours to leave changed.
    script = """
        import json, os, sys
        import matplotlib
        matplotlib.use("agg")  # someone chose another backend; %matplotlib inline takes ours back
        from kernelserver.runner import ipython
        from kernelserver.runner.executor import Executor
        pngs = []
        ex = Executor(on_display=lambda b, **e: pngs.append([n, ",".join(sorted(b))]), syntax="ipython")
        out = {}
        for n, cell in enumerate(["%matplotlib inline", "%matplotlib qt",
                                  "import matplotlib.pyplot as plt\\nplt.plot([1, 2])\\nNone",
                                  "fig = plt.figure()\\ndisplay(fig)\\nplt.close(fig)"], 1):
            out[cell] = ex.run(cell, n).status
        print(json.dumps({"backend": matplotlib.get_backend(), "ours": ipython.MPL_BACKEND,
                          "status": out, "displays": pngs,
                          "display": ex.namespace["__builtins__"]["display"].__module__}))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env={**os.environ, "MPLBACKEND": ""})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["backend"] == report["ours"] == "module://kernelserver.runner.mpl_backend"
    assert set(report["status"].values()) == {"ok"}
    assert "%matplotlib qt is not available here" in done.stderr
    # The plot through the Executor's figure flush; display(fig) through IPython's display, a PNG.
    assert report["displays"] == [[3, "image/png,text/plain"], [4, "image/png,text/plain"]]
    assert report["display"].startswith("IPython.")


def test_pip_installs_into_the_namespace_environment(tmp_path: Path) -> None:
    """%pip in a throwaway venv (never the shared .venv): a cell in that venv's Python installs a
    wheel the test made (no network) with `sys.executable -m pip`, the output streamed."""
    pytest.importorskip("IPython")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    # This environment's packages (IPython, pip, kernelserver) visible there; installs go there.
    ours = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
    Path(purelib, "ks_parent.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    wheel = tmp_path / "ks_tinypkg-0.1-py3-none-any.whl"
    info = "ks_tinypkg-0.1.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("ks_tinypkg.py", "VALUE = 42\n")
        archive.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: ks-tinypkg\nVersion: 0.1\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                                          "Root-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", f"ks_tinypkg.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n"
                                           f"{info}/RECORD,,\n")
    script = f"""
        import json
        from kernelserver.runner.executor import Executor
        ex = Executor(syntax="ipython")
        pip = ex.run("%pip install --no-index --no-deps {wheel}", 1)
        use = ex.run("import ks_tinypkg\\nks_tinypkg.VALUE, ks_tinypkg.__file__", 2)
        print(json.dumps([pip.status, use.status, use.result and use.result["text/plain"]]))
    """
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
           "PIP_NO_CACHE_DIR": "1"}
    done = subprocess.run([str(python), "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    pip_status, use_status, result = json.loads(done.stdout.splitlines()[-1])
    assert "Successfully installed ks-tinypkg-0.1" in done.stdout
    assert (pip_status, use_status) == ("ok", "ok")
    assert result.startswith("(42, ") and str(Path(purelib, "ks_tinypkg.py")) in result
    assert not Path(ours, "ks_tinypkg.py").exists()


# --- In, Out, _ -------------------------------------------------------------------------------

def test_out_and_underscores_follow_the_server_count(ns: Namespace) -> None:
    assert ns.run("40 + 2", execution_count=5).result == {"text/plain": "42"}
    ns.run("'second'", execution_count=6)
    ns.run("x = 1", execution_count=8)  # no value: Out keeps no entry, _ does not move
    out = ns.run("_, __, Out[5], _5, Out[6], 8 in Out", execution_count=9)
    assert out.result == {"text/plain": "('second', 42, 42, 42, 'second', False)"}
    assert ns.ok("___") == "42"  # _, __, ___ rotated by cell 9's value
    assert ns.ok("In[5], In[7], In[8], _i8") == "('40 + 2', '', 'x = 1', 'x = 1')"


def test_a_user_underscore_is_left_alone(ns: Namespace) -> None:
    ns.ok("'first'")
    ns.ok("_ = 'mine'")
    assert ns.ok("'second'") == "'second'"
    assert ns.ok("_, Out[3], _3") == "('mine', 'second', 'second')"  # as IPython: not overwritten


def test_a_trailing_semicolon_hides_the_value(ns: Namespace) -> None:
    ns.ok("'shown'")
    assert ns.run("1 + 1;").result is None
    assert ns.ok("_") == "'shown'"


def test_what_the_shell_adds_is_hidden(ns: Namespace) -> None:
    ns.ok("mine = 1")
    assert all(ns.shell.is_hidden(name) for name in ("In", "Out", "get_ipython", "exit", "_i1"))
    assert not ns.shell.is_hidden("mine")
    assert [v["name"] for v in ns.executor.variables()] == ["mine"]  # not In, Out, exit...


def test_an_underscore_the_cell_assigns_is_kept(ns: Namespace) -> None:
    ns.ok("'first'")
    assert ns.ok("_ = 'mine'\n'second'") == "'second'"
    assert ns.ok("_, Out[2]") == "('mine', 'second')"


def test_a_python_syntax_error_is_a_syntax_error(ns: Namespace) -> None:
    outcome = ns.run("!echo fine\nx = (")
    assert outcome.status == "error" and outcome.error is not None
    assert outcome.error.ename == "SyntaxError"
    assert ns.ok("In[1]") == "\"get_ipython().system('echo fine')\\nx = (\""


# --- get_ipython --------------------------------------------------------------------------------

def test_get_ipython_passes_the_usual_notebook_checks(ns: Namespace, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    checks = ns.ok("ip = get_ipython()\n"
                   "from IPython import get_ipython as imported\n"
                   "(ip is imported(), ip.__class__.__name__, 'zmq' in str(type(ip)).lower(),\n"
                   " ip.has_trait('kernel'), ip.kernel, 'IPKernelApp' in ip.config, __IPYTHON__)")
    assert checks == "(True, 'ZMQInteractiveShell', True, True, None, False, True)"
    # Library code finds get_ipython as a builtin, as IPython puts it there.
    (tmp_path / "ks_lib_mod.py").write_text(
        "def where():\n    return get_ipython().__class__.__name__\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert ns.ok("import ks_lib_mod\nks_lib_mod.where()") == "'ZMQInteractiveShell'"
    finally:
        sys.modules.pop("ks_lib_mod", None)


def test_the_workers_main_module_is_the_user_module(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("IPython")
    main = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)  # as the worker does before its Executor
    executor = Executor(main.__dict__, syntax="ipython")
    try:
        outcome = executor.run("class Point:\n    pass\n"
                               "import pickle, sys\n"
                               "(type(pickle.loads(pickle.dumps(Point()))).__name__,\n"
                               " sys.modules['__main__'] is get_ipython().user_module)", 1)
        assert outcome.result == {"text/plain": "('Point', True)"}
        assert sys.modules["__main__"] is main
    finally:
        executor.close()


def test_workers_forked_after_preload_each_adopt_the_built_shell() -> None:
    pytest.importorskip("IPython")
    # Its own interpreter, as a fork server: preload() there, then children forked from it.
    script = """
        import json, os, sys, types
        import builtins
        from kernelserver.runner import ipython
        from kernelserver.runner.executor import Executor
        from IPython import get_ipython
        ipython.preload()
        parent = [get_ipython() is None, hasattr(builtins, "__IPYTHON__"), "get_ipython" in dir(builtins)]
        results = []
        for child in range(2):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    main = types.ModuleType("__main__")
                    sys.modules["__main__"] = main
                    ex = Executor(main.__dict__, syntax="ipython")
                    adopted = ex.shell is not None and not ipython._TEMPLATE
                    cells = [f"x = {child}", "x * 10", "_, In[2], get_ipython() is not None", "!echo child"]
                    got = [adopted] + [ex.run(c, n).result for n, c in enumerate(cells, 1)]
                    os.write(write, json.dumps(got).encode())
                finally:
                    os._exit(0)
            os.close(write)
            results.append(json.loads(os.read(read, 65536)))
            os.waitpid(pid, 0)
        print(json.dumps({"parent": parent, "children": results}))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["parent"] == [True, False, False]  # the built shell is inert in the parent
    for child, got in enumerate(report["children"]):
        assert got == [True, None, {"text/plain": str(child * 10)},
                       {"text/plain": f"({child * 10}, 'x * 10', True)"}, None]
    assert done.stdout.count("child\n") == 2


def test_close_unregisters_the_shell() -> None:
    pytest.importorskip("IPython")
    from IPython import get_ipython

    had_flag = hasattr(builtins, "__IPYTHON__")
    shell = ipython.make_shell({}, lambda bundle, **extra: None)
    assert get_ipython() is shell
    with pytest.raises(RuntimeError, match="one per process"):
        ipython.make_shell({}, lambda bundle, **extra: None)
    shell.close()
    assert get_ipython() is None
    assert hasattr(builtins, "__IPYTHON__") is had_flag
    assert not hasattr(builtins, "get_ipython")


def test_executor_close_closes_its_shell() -> None:
    pytest.importorskip("IPython")
    from IPython import get_ipython

    executor = Executor(syntax="ipython")
    assert get_ipython() is executor.shell is not None
    with pytest.raises(RuntimeError, match="one per process"):
        Executor(syntax="ipython")
    executor.close()
    assert get_ipython() is None
    again = Executor(syntax="ipython")  # the next namespace of the process may have one
    again.close()


# --- displays -----------------------------------------------------------------------------------

def test_display_reaches_the_callback(ns: Namespace) -> None:
    ns.ok("from IPython.display import Markdown\ndisplay(Markdown('**b**'))")
    assert ns.displays == [({"text/plain": "<IPython.core.display.Markdown object>",
                             "text/markdown": "**b**"}, {})]


def test_display_id_and_update(ns: Namespace) -> None:
    ns.ok("handle = display('first', display_id=True)\nhandle.update('second')")
    (first, shown), (second, updated) = ns.displays
    assert (first, second) == ({"text/plain": "'first'"}, {"text/plain": "'second'"})
    assert shown == {"display_id": shown["display_id"]} and shown["display_id"]
    assert updated == {"display_id": shown["display_id"], "update": True}


def test_display_metadata_and_images(ns: Namespace) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
    ns.executor.namespace["png"] = png
    ns.ok("from IPython.display import Image\ndisplay(Image(data=png, width=10))")
    ((bundle, extra),) = ns.displays
    assert bundle["image/png"] == "iVBORw0KGgoAAAAAAAAAAAAAAAAAAAAA"  # base64, as it travels
    assert extra == {"metadata": {"image/png": {"width": 10}}}


def test_clear_output_reaches_its_callback(ns: Namespace) -> None:
    ns.ok("from IPython.display import clear_output\nclear_output(wait=True)\nclear_output()")
    assert ns.clears == [True, False]


# --- errors -------------------------------------------------------------------------------------

def test_a_magic_usage_error_is_clean(ns: Namespace) -> None:
    outcome = ns.run("x = 1\n%no_such_magic 1")
    assert outcome.status == "error" and outcome.error is not None
    assert (outcome.error.ename, outcome.error.evalue) == (
        "UsageError", "Line magic function `%no_such_magic` not found.")
    assert outcome.error.traceback.endswith("UsageError: Line magic function `%no_such_magic` not found.\n")
    no_ipython_in(outcome.error.traceback)
    missing = ns.run("%load_ext")
    assert missing.error is not None and (missing.error.ename, missing.error.evalue) == (
        "UsageError", "Missing module name.")


def test_tracebacks_show_only_the_cells(ns: Namespace, capsys: pytest.CaptureFixture[str]) -> None:
    ns.ok("def fails():\n    return 1 / 0")
    plain = ns.run("!true\nfails()")
    timed = ns.run("%timeit -n1 -r1 fails()")
    for outcome in (plain, timed):
        assert outcome.status == "error" and outcome.error is not None
        assert outcome.error.ename == "ZeroDivisionError"
        assert 'File "<cell-1>", line 2, in fails' in outcome.error.traceback
        no_ipython_in(outcome.error.traceback)
        assert "timeit.py" not in outcome.error.traceback
    gone = ns.run("exit()")
    assert gone.error is not None and gone.error.ename == "SystemExit"
    no_ipython_in(gone.error.traceback)
    # An error IPython catches itself (here a failing repr) is printed our way, to stderr.
    ns.ok("class Bad:\n    def _repr_html_(self):\n        raise ValueError('no html')\n"
          "display(Bad())")
    err = capsys.readouterr().err
    assert "ValueError: no html" in err
    no_ipython_in(err)


def test_top_level_await_beside_ipython_syntax(ns: Namespace,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert ns.ok("import asyncio\n!echo before\nawait asyncio.sleep(0)\nvalue = 7\nvalue") == "7"
    assert capsys.readouterr().out == "before\n"

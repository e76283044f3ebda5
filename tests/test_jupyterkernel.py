"""Foreign kernels through jupyter_client: JupyterClientKernel driven directly against real kernels.

ipykernel's python3 comes with the test extra; bash_kernel and IRkernel are skipped where missing:
  pip install bash_kernel && python -m bash_kernel.install --sys-prefix
  apt-get install --no-install-recommends r-cran-irkernel   (registers /usr/share/jupyter/kernels/ir)
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from kernelserver.backends.jupyterkernel import JupyterClientKernel, KernelLoop, LenientKernelSpec
from kernelserver.errors import NamespaceUnavailable
from kernelserver.results import Cell, Outcome

from helpers import pid_alive, wait_until

pytestmark = pytest.mark.slow

INSTALLED = set(KernelSpecManager(kernel_spec_class=LenientKernelSpec).find_kernel_specs())
HOW_TO_INSTALL = {
    "bash": "pip install bash_kernel && python -m bash_kernel.install --sys-prefix",
    "ir": "apt-get install r-cran-irkernel (or R -e 'IRkernel::installspec(user = FALSE)')",
}


class Sink:
    """Collects what a cell sends, as an Execution would; input() is answered from a thread."""

    def __init__(self, answer: str = "") -> None:
        self.stdout = self.stderr = ""
        self.displays: list[tuple[dict[str, Any], str | None, bool]] = []
        self.clears: list[bool] = []
        self.prompts: list[tuple[str, bool]] = []
        self.answer = answer
        self.printed = threading.Event()

    def write_stdout(self, text: str) -> None:
        self.stdout += text
        self.printed.set()

    def write_stderr(self, text: str) -> None:
        self.stderr += text

    def add_display(self, bundle: dict[str, Any], display_id: str | None = None,
                    update: bool = False) -> None:
        self.displays.append((bundle, display_id, update))

    def clear_output(self, wait: bool = False) -> None:
        self.clears.append(wait)

    def request_input(self, prompt: str, password: bool, reply: Callable[[str], None]) -> None:
        self.prompts.append((prompt, password))
        # As the server does: the line comes later, from a request thread.
        threading.Timer(0.2, reply, args=(self.answer,)).start()


@dataclass(frozen=True)
class Lang:
    """The same cells in one kernel's language, and where that kernel puts what they make."""

    name: str
    prints: str  # "out" to stdout, "err" to stderr
    stderr_merged: bool  # bash_kernel runs bash in a pty: both come as stdout
    value: str  # something worth 42
    value_in: str  # result (execute_result), displays (IRkernel's), or stdout (bash has no values)
    fails: str
    ename: str
    evalue: str
    html: str  # shows <b>hi</b>
    sleeps: str  # prints "started", then sleeps 30 s
    # (bash: the process that prints is the one that sleeps, so an interrupt seen after the print
    # cannot land between the two commands, where bash once let it pass)
    define: str  # x = 41
    check: str  # prints "set" or "unset"
    child: str  # starts `sleep 300` in the background and prints its pid


LANGS = {
    "python3": Lang("python3", 'import sys; print("out"); print("err", file=sys.stderr)', False, "6 * 7",
                    "result", "1 / 0", "ZeroDivisionError", "division by zero",
                    'from IPython.display import HTML, display; display(HTML("<b>hi</b>"))',
                    'import time; print("started", flush=True); time.sleep(30)', "x = 41",
                    'print("set" if "x" in globals() else "unset")',
                    'import subprocess; print(subprocess.Popen(["sleep", "300"]).pid)'),
    "bash": Lang("bash", "echo out; echo err >&2", True, "echo $((6 * 7))", "stdout", "false", "Error",
                 "1", 'echo "<b>hi</b>" | displayHTML', "sh -c 'echo started; exec sleep 30'", "x=41",
                 '[ -n "$x" ] && echo set || echo unset', "sleep 300 & echo $!"),
    "ir": Lang("ir", 'cat("out\\n"); message("err")', False, "6 * 7", "displays", 'stop("boom")',
               "ERROR", "boom", 'IRdisplay::display_html("<b>hi</b>")',
               'cat("started\\n"); Sys.sleep(30)', "x <- 41",
               'cat(if (exists("x")) "set\\n" else "unset\\n")',
               'cat(system("sleep 300 >/dev/null 2>&1 & echo $!", intern = TRUE), "\\n")'),
}


class Session:
    """A kernel and its next execution count."""

    def __init__(self, kernel: JupyterClientKernel) -> None:
        self.kernel = kernel
        self.counts = itertools.count(1)
        self.last = 0

    def run(self, code: str, sink: Sink | None = None, **cell: Any) -> tuple[Outcome, Sink]:
        sink = sink or Sink()
        self.last = next(self.counts)
        return self.kernel.execute(Cell(code, **cell), self.last, sink), sink


def lang_param(name: str) -> Any:
    reason = f"the {name} kernelspec is not installed: {HOW_TO_INSTALL.get(name)}"
    return pytest.param(LANGS[name], id=name,
                        marks=pytest.mark.skipif(name not in INSTALLED, reason=reason))


ALL = [lang_param(name) for name in LANGS]


@pytest.fixture(scope="module")
def shared() -> Iterator[dict[str, Session]]:
    """One kernel per language for the tests that leave it as it was (started on first use)."""
    sessions: dict[str, Session] = {}
    yield sessions
    for session in sessions.values():
        session.kernel.close()


@pytest.fixture
def session(shared: dict[str, Session], lang: Lang) -> Session:
    if lang.name not in shared:
        shared[lang.name] = Session(JupyterClientKernel(lang.name, interrupt_grace=3.0))
    return shared[lang.name]


@pytest.fixture
def fresh(lang: Lang) -> Iterator[Session]:
    """A kernel of its own, for a test that restarts, kills or closes it."""
    kernel = JupyterClientKernel(lang.name, interrupt_grace=3.0)
    yield Session(kernel)
    kernel.close()


@pytest.mark.parametrize("lang", ALL)
def test_stdout_and_stderr_stream_to_the_sink(session: Session, lang: Lang) -> None:
    outcome, sink = session.run(lang.prints)
    assert outcome.status == "ok", outcome
    if lang.stderr_merged:
        assert sink.stdout.split() == ["out", "err"]
    else:
        assert (sink.stdout.strip(), sink.stderr.strip()) == ("out", "err")


@pytest.mark.parametrize("lang", ALL)
def test_a_value_comes_back_where_the_kernel_puts_it(session: Session, lang: Lang) -> None:
    outcome, sink = session.run(lang.value)
    assert outcome.status == "ok", outcome
    shown = {"result": (outcome.result or {}).get("text/plain", ""),
             "displays": " ".join(b.get("text/plain", "") for b, _, _ in sink.displays),
             "stdout": sink.stdout}[lang.value_in]
    assert "42" in shown
    if lang.value_in != "result":
        assert outcome.result is None


@pytest.mark.parametrize("lang", ALL)
def test_an_error_has_ename_evalue_and_no_colour(session: Session, lang: Lang) -> None:
    outcome, _ = session.run(lang.fails)
    assert outcome.status == "error" and outcome.error is not None
    assert outcome.error.ename == lang.ename
    assert lang.evalue in outcome.error.evalue
    assert "\x1b[" not in outcome.error.traceback


@pytest.mark.parametrize("lang", ALL)
def test_display_data_becomes_a_display(session: Session, lang: Lang) -> None:
    outcome, sink = session.run(lang.html)
    assert outcome.status == "ok", outcome
    assert [b.get("text/html", "").strip() for b, _, _ in sink.displays] == ["<b>hi</b>"]


@pytest.mark.parametrize("lang", ALL)
def test_interrupt_stops_the_sleeping_cell_and_keeps_the_namespace(session: Session, lang: Lang) -> None:
    session.run(lang.define)
    sink = Sink()
    answers: list[bool] = []

    def interrupt() -> None:
        sink.printed.wait(10)  # the cell runs (IRkernel may hold its output: then after 10 s)
        answers.append(session.kernel.interrupt(session.last))

    threading.Thread(target=interrupt).start()
    started = time.monotonic()
    outcome, _ = session.run(lang.sleeps, sink)
    assert outcome.status == "interrupted", outcome
    assert time.monotonic() - started < 20
    assert answers == [True]
    assert not session.kernel.interrupt(session.last)  # it has ended
    assert session.run(lang.check)[1].stdout.strip() == "set"


@pytest.mark.parametrize("lang", ALL)
def test_timeout_interrupts_and_says_so(session: Session, lang: Lang) -> None:
    outcome, _ = session.run(lang.sleeps, timeout=1.5)
    assert outcome.status == "timeout" and outcome.error is not None
    assert outcome.error.ename == "TimeoutError"
    assert "exceeded its timeout of 1.5 s and was interrupted" in outcome.error.evalue
    assert not outcome.restarted
    assert session.run(lang.value)[0].status == "ok"  # the kernel goes on


@pytest.mark.parametrize("lang", ALL)
def test_restart_clears_the_namespace(fresh: Session, lang: Lang) -> None:
    fresh.run(lang.define)
    assert fresh.run(lang.check)[1].stdout.strip() == "set"
    pid = fresh.kernel.details()["pid"]
    fresh.kernel.restart()
    assert fresh.kernel.details()["pid"] != pid
    assert wait_until(lambda: not pid_alive(pid), 5)
    assert fresh.run(lang.check)[1].stdout.strip() == "unset"


@pytest.mark.parametrize("lang", ALL)
def test_close_leaves_no_process_behind(fresh: Session, lang: Lang) -> None:
    outcome, sink = fresh.run(lang.child)
    assert outcome.status == "ok", outcome
    child, kernel = int(sink.stdout.split()[-1]), fresh.kernel.details()["pid"]
    assert pid_alive(child) and pid_alive(kernel)
    fresh.kernel.close()
    assert wait_until(lambda: not pid_alive(kernel) and not pid_alive(child), 5)
    assert not fresh.kernel.is_alive()
    with pytest.raises(NamespaceUnavailable):
        fresh.run(lang.value)


# What the server relies on beyond the cells themselves, on ipykernel (always installed).
PY = [lang_param("python3")]


@pytest.mark.parametrize("lang", PY)
def test_details_name_the_kernel(session: Session, lang: Lang) -> None:
    details = session.kernel.details()
    assert details["implementation"] == "ipython" and details["language_info"]["name"] == "python"
    assert pid_alive(details["pid"]) and details["memory_rss"] > 0
    assert session.kernel.is_alive() and session.kernel.variables() == []


@pytest.mark.parametrize("lang", PY)
def test_input_goes_to_the_client_only_where_allowed(session: Session, lang: Lang) -> None:
    outcome, sink = session.run("input('name? ')", Sink(answer="ada"), allow_stdin=True)
    assert (outcome.result, sink.prompts) == ({"text/plain": "'ada'"}, [("name? ", False)])
    outcome, sink = session.run("input('name? ')")
    assert outcome.error is not None and outcome.error.ename == "StdinNotImplementedError"
    assert sink.prompts == []


@pytest.mark.parametrize("lang", PY)
def test_display_updates_clears_and_expressions(session: Session, lang: Lang) -> None:
    outcome, sink = session.run(
        "from IPython.display import clear_output, display\n"
        "h = display('one', display_id=True); h.update('two'); clear_output(wait=True)\n"
        "print('after')", user_expressions={"e": "40 + 2"})
    assert [(b["text/plain"], update) for b, _, update in sink.displays] == [
        ("'one'", False), ("'two'", True)]
    assert len({display_id for _, display_id, _ in sink.displays}) == 1
    assert (sink.clears, sink.stdout) == ([True], "after\n")
    assert outcome.user_expressions == {"e": {"status": "ok", "data": {"text/plain": "42"},
                                              "metadata": {}}}


@pytest.mark.parametrize("lang", PY)
def test_the_repr_limit_cuts_results(session: Session, lang: Lang) -> None:
    outcome, _ = session.run("'y' * 5000", repr_limit=100)
    assert outcome.truncated and outcome.result is not None
    assert len(outcome.result["text/plain"]) < 200


@pytest.mark.parametrize("lang", PY)
def test_an_interrupt_before_the_cell_starts_skips_it(session: Session, lang: Lang) -> None:
    assert session.kernel.interrupt(session.last + 1)
    outcome, sink = session.run("print('ran')")
    assert outcome.status == "interrupted" and sink.stdout == ""
    assert session.run("print('ran')")[1].stdout == "ran\n"


@pytest.mark.parametrize("lang", PY)
def test_complete_and_inspect_ask_the_kernel(session: Session, lang: Lang) -> None:
    assert "import" in session.kernel.complete("imp", 3)["matches"]
    found = session.kernel.inspect("len", 3, 0)
    assert found["found"] and "Return the number of items" in found["data"]["text/plain"]


@pytest.mark.parametrize("lang", PY)
def test_a_kernel_dying_mid_cell_is_restarted(fresh: Session, lang: Lang) -> None:
    fresh.run(lang.define)
    outcome, _ = fresh.run("import os; os._exit(3)")
    assert outcome.status == "error" and outcome.restarted and outcome.error is not None
    assert outcome.error.ename == "WorkerDied"
    assert "exited with code 3" in outcome.error.evalue
    assert fresh.kernel.is_alive()
    outcome, sink = fresh.run(lang.check)
    assert (outcome.restarted, sink.stdout) == (False, "unset\n")


@pytest.mark.parametrize("lang", PY)
def test_a_kernel_killed_between_cells_is_replaced_for_the_next(fresh: Session, lang: Lang) -> None:
    pid = fresh.kernel.details()["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not fresh.kernel.is_alive(), 5)
    outcome, sink = fresh.run(lang.value)
    assert outcome.restarted and outcome.result == {"text/plain": "42"}
    assert "was killed by SIGKILL after the last cell" in sink.stderr


@pytest.mark.parametrize("lang", PY)
def test_a_cell_deaf_to_interrupts_is_killed_at_the_grace(fresh: Session, lang: Lang) -> None:
    started = time.monotonic()
    outcome, _ = fresh.run("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                           "time.sleep(60)", timeout=1.0)
    assert outcome.status == "timeout" and outcome.restarted and outcome.error is not None
    assert "did not stop within 3 s of its interrupt" in outcome.error.evalue
    assert time.monotonic() - started < 30
    assert fresh.run(lang.value)[0].result == {"text/plain": "42"}


@pytest.mark.parametrize("lang", PY)
def test_restart_during_a_cell_ends_it(fresh: Session, lang: Lang) -> None:
    threading.Timer(1.0, fresh.kernel.restart).start()
    outcome, _ = fresh.run(lang.sleeps)
    assert outcome.error is not None and outcome.error.ename == "NamespaceRestarted"
    assert wait_until(lambda: fresh.kernel.is_alive(), 30)
    assert fresh.run(lang.value)[0].result == {"text/plain": "42"}


def test_an_unknown_kernelspec_is_unavailable() -> None:
    loop = KernelLoop()
    try:
        with pytest.raises(NamespaceUnavailable, match="no such kernelspec is installed"):
            JupyterClientKernel("no-such-kernel", loop=loop)
    finally:
        loop.close()

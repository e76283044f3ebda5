"""Interrupts sent the moment a cell is accepted are never lost, and never land on a later cell.

Issue 22, point 2: an interrupt that came before the worker started the cell (queued, taken by
the runner, its message on the way) was dropped, and the cell ran on while the answer said
`interrupted: true`. Each race test runs 100 rounds on one namespace and counts what went wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from kernelserver.backends.forkserver import ForkServer
from kernelserver.backends.inprocess import InProcessKernel
from kernelserver.backends.process import ProcessKernel
from kernelserver.execution import Execution
from kernelserver.results import Cell

from helpers import ApiClient, LiveServer, wait_until
from jupyter_ws import KernelClient

ROUNDS = 100
END_WITHIN = 10.0  # seconds an interrupted cell may take to end: generous, it takes milliseconds
GIVE_UP_AFTER = 3  # lost interrupts before a race test stops counting (each costs END_WITHIN)

# A cell that would run for 30 s. The inprocess backend raises the interrupt between bytecodes,
# so its cell sleeps in short steps; the process backend's must stop inside one long sleep.
LONG = {"process": "import time; time.sleep(30)",
        "inprocess": "import time\nfor _ in range(3000):\n    time.sleep(0.01)"}


def _stop(interrupt: Callable[[], bool], ended: Callable[[], bool]) -> None:
    """A cell the race let run on: interrupt it until it ends, so the next round starts clean."""
    assert wait_until(lambda: (interrupt() or True) and ended(), 60, 0.1), "the cell never stopped"


class Http:
    """POST /execute, /env/interrupt and GET /env/execution over a test client or a live server."""

    def __init__(self, post: Callable[[str, dict[str, Any]], Any],
                 get: Callable[[str, dict[str, Any]], Any], namespace: str) -> None:
        self._post, self._get, self.namespace = post, get, namespace

    def submit(self, code: str, **extra: Any) -> dict[str, Any]:
        answer: dict[str, Any] = self._post("/execute", {"id": self.namespace, "code": code, **extra})
        return answer

    def interrupt(self) -> bool:
        return bool(self._post("/env/interrupt", {"id": self.namespace})["interrupted"])

    def result(self, n: int, wait: float = END_WITHIN) -> dict[str, Any]:
        answer: dict[str, Any] = self._get("/env/execution", {"id": self.namespace, "n": n,
                                                              "wait": wait})
        return answer


def flask_http(api: ApiClient, namespace: str) -> Http:
    def post(path: str, body: dict[str, Any]) -> Any:
        response = api.post(path, json=body)
        assert response.status_code in (200, 202), response.get_data(as_text=True)
        return response.get_json()

    def get(path: str, query: dict[str, Any]) -> Any:
        response = api.get(path, query_string=query)
        assert response.status_code in (200, 202), response.get_data(as_text=True)
        return response.get_json()

    assert api.create(namespace).status_code in (200, 201)
    return Http(post, get, namespace)


def race(http: Http, code: str) -> list[str]:
    """ROUNDS of: submit with wait 0, interrupt at once; what went wrong, round by round."""
    problems: list[str] = []
    for i in range(ROUNDS):
        n = http.submit(code, wait=0)["execution_count"]
        interrupted = http.interrupt()
        final = http.result(n)
        if not interrupted or final["status"] != "interrupted":
            problems.append(f"round {i}: interrupted={interrupted}, status={final['status']}")
            def ended(n: int = n) -> bool:
                return http.result(n, 0)["status"] not in ("queued", "running")

            _stop(http.interrupt, ended)
            if len(problems) >= GIVE_UP_AFTER:
                break
        else:
            assert final["error"]["ename"] == "KeyboardInterrupt", final
    return problems


def test_an_interrupt_right_after_the_cell_is_accepted_stops_it(api: ApiClient, backend: str) -> None:
    problems = race(flask_http(api, "race"), LONG[backend])
    assert not problems, f"interrupts lost (gave up after {GIVE_UP_AFTER}): {problems}"
    # The namespace is still usable after a hundred interrupted cells.
    assert api.run("'after'", id="race")["result"] == {"text/plain": "'after'"}


@pytest.fixture
def session(server: LiveServer) -> Iterator[requests.Session]:
    with requests.Session() as opened:
        opened.headers.update(server.headers)
        yield opened


@pytest.mark.slow
def test_an_interrupt_right_after_the_cell_is_accepted_stops_it_under_gunicorn(
        server: LiveServer, session: requests.Session) -> None:
    def post(path: str, body: dict[str, Any]) -> Any:
        response = session.post(server.url + path, json=body, timeout=60)
        assert response.status_code in (200, 201, 202), response.text
        return response.json()

    def get(path: str, query: dict[str, Any]) -> Any:
        response = session.get(server.url + path, params=query, timeout=60)
        assert response.status_code in (200, 202), response.text
        return response.json()

    post("/env/create", {"id": "race-live"})
    problems = race(Http(post, get, "race-live"), LONG["process"])
    assert not problems, f"interrupts lost (gave up after {GIVE_UP_AFTER}): {problems}"


def test_the_answer_says_whether_the_cell_was_interrupted_and_spares_the_next(
        api: ApiClient, backend: str) -> None:
    # A quick cell races its interrupt: either it is interrupted and the answer says true, or it
    # finished first and the answer says false; either way the next cell is not touched.
    http = flask_http(api, "truth")
    both: set[bool] = set()
    for i in range(ROUNDS):
        n = http.submit("x = 1", wait=0)["execution_count"]
        interrupted = http.interrupt()
        status = http.result(n)["status"]
        assert status == ("interrupted" if interrupted else "ok"), (i, interrupted, status)
        both.add(interrupted)
        after = api.run("import time\ntime.sleep(0.001)\n'next'", id="truth")
        assert after["status"] == "ok" and after["result"] == {"text/plain": "'next'"}, (i, after)
    assert True in both  # the race was run, not just lost every time


def test_a_late_interrupt_answers_false_and_does_not_stop_the_next_cell(
        api: ApiClient, backend: str) -> None:
    http = flask_http(api, "late")
    done = api.run("x = 1", id="late")
    assert done["status"] == "ok"
    assert http.interrupt() is False
    after = api.run("import time\ntime.sleep(0.2)\n'next'", id="late")
    assert after["status"] == "ok" and after["result"] == {"text/plain": "'next'"}


def test_an_interrupt_stops_the_running_cell_and_the_queued_one_then_runs(
        api: ApiClient, backend: str) -> None:
    # As in Jupyter: the interrupt is for the cell running now; cells queued behind it run.
    http = flask_http(api, "queue")
    first = http.submit("print('first', flush=True)\n" + LONG[backend], wait=0)["execution_count"]
    assert wait_until(lambda: http.result(first, 0)["stdout"] == "first\n", 10, 0.01)
    second = http.submit("'second'", wait=0)["execution_count"]
    assert http.interrupt() is True
    assert http.result(first)["status"] == "interrupted"
    ran = http.result(second)
    assert ran["status"] == "ok" and ran["result"] == {"text/plain": "'second'"}
    assert http.interrupt() is False  # nothing left to interrupt


def test_an_interrupt_with_nothing_running_stops_the_first_queued_cell_only(
        api: ApiClient, backend: str) -> None:
    http = flask_http(api, "first-queued")
    blocker = http.submit("print('blocker', flush=True)\n" + LONG[backend], wait=0)["execution_count"]
    assert wait_until(lambda: http.result(blocker, 0)["stdout"] == "blocker\n", 10, 0.01)
    queued = [http.submit(f"'q{i}'", wait=0)["execution_count"] for i in range(3)]
    assert http.interrupt() is True  # the blocker
    assert http.result(blocker)["status"] == "interrupted"
    for n in queued:
        assert http.result(n)["status"] == "ok"


def test_a_timeout_smaller_than_the_start_of_the_cell_still_interrupts_it(
        make_app: Callable[..., Any]) -> None:
    # The timeout's interrupt may come before the worker starts the cell: it must not be lost
    # (the worker would be killed after interrupt_grace and the namespace restarted empty).
    api = ApiClient(make_app(backend="process", interrupt_grace=5.0).test_client())
    api.create("tiny")
    api.run("kept = 1", id="tiny")
    for i in range(20):
        answer = api.run(LONG["process"], id="tiny", timeout=0.0005)
        assert answer["status"] == "timeout" and answer["restarted"] is False, (i, answer)
    assert api.run("kept", id="tiny")["result"] == {"text/plain": "1"}


# -- the kernels themselves --

@pytest.fixture
def process_kernel() -> Iterator[ProcessKernel]:
    forkserver = ForkServer()
    forkserver.start()
    try:
        with ProcessKernel(forkserver, {}, 1.0, autostart=False) as kernel:
            yield kernel
    finally:
        forkserver.close()


@pytest.fixture
def inprocess_kernel() -> Iterator[InProcessKernel]:
    kernel = InProcessKernel(1 << 20)
    yield kernel
    kernel.close()


@pytest.mark.parametrize("kind", ["process", "inprocess"])
def test_a_kernel_interrupt_names_its_cell(kind: str, request: pytest.FixtureRequest) -> None:
    kernel: Any = request.getfixturevalue(f"{kind}_kernel")
    assert kernel.execute(Cell("x = 1"), 1, Execution("k", 1, "", 1000)).status == "ok"
    assert kernel.interrupt(1) is False  # finished: nothing to interrupt
    # An interrupt for a cell not yet started is kept for it: it is answered without running.
    assert kernel.interrupt(2) is True
    outcome = kernel.execute(Cell("x = 2"), 2, Execution("k", 2, "", 1000))
    assert outcome.status == "interrupted" and outcome.error is not None
    assert outcome.error.ename == "KeyboardInterrupt"
    # It is spent: the next cell runs, and x was never set to 2.
    assert kernel.execute(Cell("x"), 3, Execution("k", 3, "", 1000)).result == {"text/plain": "1"}
    # One kept for a cell that never came is dropped once a later cell starts.
    assert kernel.interrupt(4) is True
    assert kernel.execute(Cell("'five'"), 5, Execution("k", 5, "", 1000)).status == "ok"


# -- Jupyter's control channel --

@pytest.fixture
def jupyter(server: LiveServer) -> Iterator[tuple[KernelClient, str]]:
    headers = {"Authorization": f"token {server.token}"}
    made = requests.post(server.url + "/api/kernels", json={"name": "python3"}, headers=headers,
                         timeout=30)
    assert made.status_code == 201, made.text
    kernel_id = made.json()["id"]
    client = KernelClient(server.url, kernel_id, server.token)
    try:
        yield client, kernel_id
    finally:
        client.close()
        requests.delete(server.url + f"/api/kernels/{kernel_id}", headers=headers, timeout=30)


def test_an_interrupt_request_on_the_cells_first_message_stops_it(
        server: LiveServer, jupyter: tuple[KernelClient, str]) -> None:
    client, kernel_id = jupyter
    headers = {"Authorization": f"token {server.token}"}
    problems: list[str] = []
    for i in range(ROUNDS):
        cell = client.send("execute_request", {"code": LONG["process"], "silent": False})["msg_id"]
        first = client.until(lambda m, cell=cell: m["parent_header"].get("msg_id") == cell)[-1]
        assert first["msg_type"] in ("status", "execute_input"), first
        asked = client.send("interrupt_request", channel="control")["msg_id"]
        replies: dict[str, dict[str, Any]] = {}

        def seen(m: dict[str, Any], cell: str = cell, asked: str = asked,
                 replies: dict[str, dict[str, Any]] = replies) -> bool:
            parent = m["parent_header"].get("msg_id")
            if m["msg_type"] in ("interrupt_reply", "execute_reply") and parent in (cell, asked):
                replies[m["msg_type"]] = m["content"]
            return m["msg_type"] == "status" and parent == cell \
                and m["content"]["execution_state"] == "idle"

        try:
            client.until(seen, END_WITHIN)
        except TimeoutError:
            problems.append(f"round {i}: the cell ran on ({sorted(replies)} came)")
            def idle(cell: str = cell) -> bool:
                return _idle_within(client, cell, 0.2)

            _stop(lambda: requests.post(server.url + f"/api/kernels/{kernel_id}/interrupt",
                                        headers=headers, timeout=30).ok, idle)
            if len(problems) >= GIVE_UP_AFTER:
                break
            continue
        if "interrupt_reply" not in replies:  # it may come after the cell's idle
            replies["interrupt_reply"] = client.until(
                lambda m, asked=asked: m["msg_type"] == "interrupt_reply"
                and m["parent_header"].get("msg_id") == asked, END_WITHIN)[-1]["content"]
        reply = replies.get("execute_reply", {})
        if reply.get("status") != "error" or reply.get("ename") != "KeyboardInterrupt":
            problems.append(f"round {i}: execute_reply {reply}")
        assert replies["interrupt_reply"]["status"] == "ok"
    assert not problems, f"interrupts lost (gave up after {GIVE_UP_AFTER}): {problems}"


def _idle_within(client: KernelClient, cell: str, timeout: float) -> bool:
    """True once the cell's idle status came within timeout."""
    try:
        client.until(lambda m: m["msg_type"] == "status" and m["content"]["execution_state"]
                     == "idle" and m["parent_header"].get("msg_id") == cell, timeout)
    except TimeoutError:
        return False
    return True

"""The service driven directly, as every front end drives it: no Flask, real workers, real SQLite."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from kernelserver.errors import ExecutionNotFound, NamespaceNotFound
from kernelserver.results import (
    Cell,
    DisplayEvent,
    InputRequestEvent,
    KeepaliveEvent,
    OutputEvent,
    ResultEvent,
    StartedEvent,
    StateEvent,
    StreamErrorEvent,
)
from kernelserver.service import Service
from kernelserver.subscriptions import Listener, NamespaceEvent, NamespaceSubscription

from helpers import AUTH, wait_until


def drain(subscription: NamespaceSubscription, until: Callable[[list[NamespaceEvent]], bool],
          timeout: float = 10.0) -> list[NamespaceEvent]:
    """Read a namespace subscription until `until` holds of what was read (bounded)."""
    seen: list[NamespaceEvent] = []
    deadline = time.monotonic() + timeout
    while not until(seen) and time.monotonic() < deadline:
        item = subscription.get(0.2)
        if item is not None:
            seen.append(item)
    return seen


def results_of(seen: list[NamespaceEvent]) -> list[ResultEvent]:
    return [item.event for item in seen if isinstance(item.event, ResultEvent)]


def test_create_submit_wait_and_read_back(service: Service) -> None:
    assert service.create("s") is True and service.create("s") is False
    execution = service.submit("s", Cell("x = 6\nprint('hi')\nx * 7"), inline=True)
    assert service.wait(execution, 10)
    result = execution.snapshot()
    assert (result.status, result.stdout, result.result) == ("ok", "hi\n", {"text/plain": "42"})
    assert service.describe("s").variables == [{"name": "x", "type": "int", "repr": "6"}]
    assert [row["code"] for row in service.history_of("s", 10)] == ["x = 6\nprint('hi')\nx * 7"]
    service.delete("s")
    # Gone from the registry, still readable from history, answered like a live one.
    recorded = service.execution("s", execution.execution_count)
    assert recorded.finished and recorded.snapshot().stdout == "hi\n"
    assert recorded.to_dict()["result"] == {"text/plain": "42"}
    with pytest.raises(ExecutionNotFound):
        service.execution("s", 99)
    with pytest.raises(NamespaceNotFound):
        service.execution("never", 1)


def test_wait_returns_at_its_limit_and_the_execution_goes_on(service: Service) -> None:
    service.create("w")
    execution = service.submit("w", Cell("import time\ntime.sleep(0.6)\n'late'"))
    started = time.monotonic()
    assert service.wait(execution, 0.1) is False
    assert time.monotonic() - started < 0.5
    assert execution.status in ("queued", "running")
    assert service.wait(execution, 10) is True
    assert execution.snapshot().result == {"text/plain": "'late'"}


def test_the_default_namespace_is_created_by_submit_others_are_not(service: Service) -> None:
    execution = service.submit("default", Cell("1"), inline=True)
    assert service.wait(execution, 10) and "default" in service.ids()
    with pytest.raises(NamespaceNotFound):
        service.submit("other", Cell("1"))


def test_stream_gives_typed_events_in_order(service: Service) -> None:
    service.create("st")
    code = ("import sys\nprint('a', flush=True)\nsys.stderr.write('b\\n')\n"
            "display({'text/plain': 'd'}, raw=True)\nprint('c', flush=True)\n3")
    stream = service.stream(service.submit("st", Cell(code)))
    events = list(stream.events())
    kinds = [(type(e).__name__, getattr(e, "text", None)) for e in events]
    assert kinds[-1][0] == "ResultEvent"
    texts = "".join(e.text for e in events if isinstance(e, OutputEvent) and e.stream == "stdout")
    assert texts == "a\nc\n"
    assert [e.data for e in events if isinstance(e, DisplayEvent)] == [{"text/plain": "d"}]
    final = events[-1]
    assert isinstance(final, ResultEvent) and final.result.result == {"text/plain": "3"}
    assert final.to_dict()["event"] == "result" and final.result.stderr == "b\n"


def test_stream_of_a_quiet_cell_sends_keepalives(make_service: Callable[..., Service]) -> None:
    service = make_service(backend="process", stream_keepalive=0.2)
    service.create("quiet")
    stream = service.stream(service.submit("quiet", Cell("import time\ntime.sleep(0.7)")))
    events = list(stream.events())
    assert sum(isinstance(e, KeepaliveEvent) for e in events) >= 2
    assert isinstance(events[-1], ResultEvent)


def test_namespace_subscription_sees_every_cell_of_every_sender(
        make_service: Callable[..., Service], backend: str, tmp_path: Path) -> None:
    service = make_service(backend=backend)
    service.create("shared")
    with service.subscribe("shared") as watcher:
        mine = service.submit("shared", Cell("print('from me')\n1"))
        theirs = service.submit("shared", Cell("print('from them')\n2"), inline=True)
        seen = drain(watcher, lambda s: len(results_of(s)) == 2)
    by_cell: dict[int, list[Any]] = {}
    for item in seen:
        assert item.execution is not None
        by_cell.setdefault(item.execution.execution_count, []).append(item.event)
    assert sorted(by_cell) == [mine.execution_count, theirs.execution_count]
    for execution, text, value in ((mine, "from me\n", "1"), (theirs, "from them\n", "2")):
        events = by_cell[execution.execution_count]
        assert events[0] == StartedEvent(execution.execution_count, execution.code)
        assert "".join(e.text for e in events if isinstance(e, OutputEvent)) == text
        assert isinstance(events[-1], ResultEvent)
        assert events[-1].result.result == {"text/plain": value}
    # In submission order: the second cell starts only after the first one's result.
    order = [(type(i.event).__name__, i.execution.execution_count) for i in seen
             if isinstance(i.event, (StartedEvent, ResultEvent)) and i.execution is not None]
    assert order == [("StartedEvent", mine.execution_count), ("ResultEvent", mine.execution_count),
                     ("StartedEvent", theirs.execution_count), ("ResultEvent", theirs.execution_count)]


def test_namespace_subscription_sees_cells_sent_over_http(make_app: Callable[..., Flask]) -> None:
    app = make_app(backend="process")
    service: Service = app.extensions["kernelserver"]
    client = app.test_client()
    assert client.post("/env/create", json={"id": "web"}, headers=AUTH).status_code == 201
    with service.subscribe("web") as watcher:
        answer = client.post("/execute", json={"id": "web", "code": "print('over http')\n7"},
                             headers=AUTH).get_json()
        seen = drain(watcher, lambda s: len(results_of(s)) == 1)
    assert [i.event for i in seen if isinstance(i.event, OutputEvent)] == [
        OutputEvent("stdout", "over http\n")]
    result = results_of(seen)[0].result
    assert result.execution_count == answer["execution_count"]
    assert result.result == {"text/plain": "7"}


def test_namespace_subscription_reports_restart_and_ends_on_delete(service: Service) -> None:
    service.create("life")
    watcher = service.subscribe("life")
    service.restart("life")
    service.delete("life")
    states = [i.event.state for i in drain(watcher, lambda s: watcher.closed)
              if isinstance(i.event, StateEvent)]
    assert states == ["restarting", "idle", "dead"]
    assert watcher.closed and watcher.get(0.01) is None
    with pytest.raises(NamespaceNotFound):
        service.subscribe("life")


def test_a_watcher_that_never_reads_is_cut_off_without_slowing_the_cell(service: Service) -> None:
    service.create("flood")
    idle_watcher = service.subscribe("flood")
    # Displays, one event each, however fast they come (printed text coalesces into reads).
    code = "for i in range(1000):\n    display({'text/plain': str(i)}, raw=True)"
    started = time.monotonic()
    execution = service.submit("flood", Cell(code), inline=True)
    assert service.wait(execution, 20)
    assert time.monotonic() - started < 10  # never waited on the watcher's full queue
    assert len(execution.snapshot().displays) == 1000
    items = drain(idle_watcher, lambda s: bool(s) and isinstance(s[-1].event, StreamErrorEvent))
    assert isinstance(items[-1].event, StreamErrorEvent)
    assert items[-1].event.code == "stream_lagging" and idle_watcher.closed


def test_cancel_on_disconnect_drops_a_queued_cell_and_spares_the_running_one(
        make_service: Callable[..., Service]) -> None:
    service = make_service(backend="process")
    service.create("c")
    running = service.submit("c", Cell("import time\nprint('working', flush=True)\ntime.sleep(1)\n'done'"))
    assert wait_until(lambda: running.status == "running", 10)
    queued = service.submit("c", Cell("print('must not run')"))
    stream = service.stream(queued, cancel_on_disconnect=True)
    stream.close()  # the streaming client went away while its cell was still queued
    assert queued.wait(5) and queued.status == "interrupted"
    assert service.wait(running, 10)
    assert running.snapshot().status == "ok"  # the other client's cell was not interrupted
    assert running.snapshot().result == {"text/plain": "'done'"}
    after = service.submit("c", Cell("'next'"), inline=True)
    assert service.wait(after, 10)
    assert after.snapshot().result == {"text/plain": "'next'"}
    assert queued.snapshot().stdout == ""
    history = {row["execution_count"]: row["status"] for row in service.history_of("c", 10)}
    assert history[queued.execution_count] == "interrupted"


def test_cancel_on_disconnect_interrupts_its_running_cell(make_service: Callable[..., Service]) -> None:
    service = make_service(backend="process")
    service.create("ci")
    execution = service.submit("ci", Cell("import time\nprint('go', flush=True)\ntime.sleep(30)"))
    stream = service.stream(execution, cancel_on_disconnect=True)
    first = next(iter(stream.events()))
    assert first == OutputEvent("stdout", "go\n")
    stream.close()
    assert execution.wait(10) and execution.status == "interrupted"


def test_interrupt_and_restart_through_the_service(service: Service) -> None:
    service.create("ir")
    assert service.wait(service.submit("ir", Cell("kept = 1"), inline=True), 10)
    assert service.interrupt("ir") is False  # nothing runs
    looping = service.submit("ir", Cell("while True:\n    pass"))
    assert wait_until(lambda: looping.status == "running", 10)
    assert service.interrupt("ir") is True
    assert looping.wait(10) and looping.status == "interrupted"
    info = service.restart("ir")
    assert info.variables == [] and info.state == "idle"
    after = service.submit("ir", Cell("kept"), inline=True)
    assert service.wait(after, 10)
    assert after.snapshot().error is not None and after.snapshot().error.ename == "NameError"
    assert after.execution_count == looping.execution_count + 1  # counts go on after a restart


def test_service_closes_its_workers(make_service: Callable[..., Service]) -> None:
    service = make_service(backend="process")
    service.create("p")
    pid = service.describe("p", with_variables=False).details["pid"]
    service.close()
    from helpers import pid_alive

    assert wait_until(lambda: not pid_alive(pid), 5)


def test_many_threads_submit_to_one_namespace_in_order(make_service: Callable[..., Service]) -> None:
    service = make_service(backend="process")
    service.create("fifo")
    executions: list[Any] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        execution = service.submit("fifo", Cell(f"seen = globals().setdefault('seen', [])\nseen.append({i})"))
        with lock:
            executions.append(execution)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for execution in executions:
        assert service.wait(execution, 10)
    final = service.submit("fifo", Cell("seen"), inline=True)
    assert service.wait(final, 10)
    by_count = sorted(executions, key=lambda e: e.execution_count)
    expected = [int(e.code.rsplit("(", 1)[1].rstrip(")")) for e in by_count]
    assert final.snapshot().result == {"text/plain": repr(expected)}


def test_user_expressions_are_evaluated_after_the_cell(service: Service) -> None:
    service.create("ue")
    cell = Cell("x = 20", user_expressions={"double": "x * 2", "broken": "1/0"})
    execution = service.submit("ue", cell, inline=True)
    assert service.wait(execution, 10)
    found = execution.outcome.user_expressions if execution.outcome else None
    assert found is not None
    assert found["double"] == {"status": "ok", "data": {"text/plain": "40"}, "metadata": {}}
    assert found["broken"]["status"] == "error" and found["broken"]["ename"] == "ZeroDivisionError"


def test_input_asks_the_subscriber_and_the_answer_reaches_the_cell(service: Service) -> None:
    service.create("in")
    execution = service.submit("in", Cell("print('before', flush=True)\nname = input('who? ')\n"
                                          "print('hi', name)\nname", allow_stdin=True))
    stream = service.stream(execution)
    seen = []
    for event in stream.events():
        seen.append(event)
        if isinstance(event, InputRequestEvent):
            assert service.provide_input(execution, "ada") is True
    assert InputRequestEvent("who? ", False) in seen
    result = seen[-1]
    assert isinstance(result, ResultEvent)
    assert result.result.stdout == "before\nhi ada\n" and result.result.result == {"text/plain": "'ada'"}
    assert service.provide_input(execution, "late") is False  # nothing waits any more


def test_getpass_asks_for_a_password(make_service: Callable[..., Service]) -> None:
    service = make_service(backend="process")
    service.create("pw")
    execution = service.submit("pw", Cell("import getpass\nlen(getpass.getpass('secret: '))",
                                          allow_stdin=True))
    events = service.stream(execution).events()
    request = next(e for e in events if isinstance(e, InputRequestEvent))
    assert request == InputRequestEvent("secret: ", True)
    service.provide_input(execution, "hunter2")
    assert service.wait(execution, 10) and execution.snapshot().result == {"text/plain": "7"}


def test_a_cell_waiting_for_input_can_be_interrupted(service: Service) -> None:
    service.create("wait")
    execution = service.submit("wait", Cell("input('never answered')", allow_stdin=True))
    events = service.stream(execution).events()
    assert isinstance(next(events), InputRequestEvent)
    assert service.interrupt("wait") is True
    assert service.wait(execution, 10) and execution.status == "interrupted"
    after = service.submit("wait", Cell("'alive'"), inline=True)
    assert service.wait(after, 10) and after.snapshot().result == {"text/plain": "'alive'"}


def test_completion_and_inspection_from_the_namespace(service: Service) -> None:
    service.create("ci2")
    done = service.submit("ci2", Cell("import os\nmy_variable = 41\ndef helper(a, b=2):\n"
                                      "    'Adds things.'\n    return a + b"), inline=True)
    assert service.wait(done, 10)
    reply = service.complete("ci2", "my_va", 5)
    assert reply["matches"] == ["my_variable"] and (reply["cursor_start"], reply["cursor_end"]) == (0, 5)
    assert "os.path" in service.complete("ci2", "x = os.pa", 9)["matches"]
    found = service.inspect("ci2", "helper(1)", 3)
    assert found["found"] is True
    text = found["data"]["text/plain"]
    assert "helper(a, b=2)" in text and "Adds things." in text
    assert service.inspect("ci2", "nothing_here", 4)["found"] is False


def test_a_stream_of_a_cell_that_already_finished_still_carries_its_output(service: Service) -> None:
    # A fast cell can finish before its streaming client subscribes (the soak test caught one).
    service.create("fast")
    execution = service.submit("fast", Cell("import sys\nprint('out')\nsys.stderr.write('err')\n"
                                            "display({'text/plain': 'd'}, raw=True)\n1"))
    assert service.wait(execution, 10)
    events = list(service.stream(execution).events())
    assert events[:3] == [OutputEvent("stdout", "out\n"), OutputEvent("stderr", "err"),
                          DisplayEvent({"text/plain": "d"})]
    assert isinstance(events[3], ResultEvent) and len(events) == 4
    # Read back from history, too.
    service.delete("fast")
    recorded = list(service.stream(service.execution("fast", execution.execution_count)).events())
    assert recorded[0] == OutputEvent("stdout", "out\n") and isinstance(recorded[-1], ResultEvent)


def _drain(listener: Listener[Any]) -> list[Any]:
    items = []
    while (item := listener.get(0)) is not None:
        items.append(item)
    return items


def test_a_stream_client_that_falls_behind_misses_only_what_came_meanwhile() -> None:
    listener: Listener[Any] = Listener(100, max_bytes=100, gap=lambda n: ("left out", n))
    for number in range(6):  # three fit; three come while it is behind
        assert listener.offer(("out", number), 30)
    assert listener.offer(("result",), 0)  # the end always comes, after the note
    assert _drain(listener) == [("out", 0), ("out", 1), ("out", 2), ("left out", 90), ("result",)]


def test_a_stream_client_that_catches_up_gets_output_again_after_a_note() -> None:
    listener: Listener[Any] = Listener(100, max_bytes=100, gap=lambda n: ("left out", n))
    for number in range(4):
        listener.offer(("out", number), 40)  # 0 and 1 fit, 2 and 3 are left out
    assert listener.get(0) == ("out", 0)  # 40 of 100 waiting: under half, it takes output again
    listener.offer(("out", 4), 40)
    assert _drain(listener) == [("out", 1), ("left out", 80), ("out", 4)]
    assert not listener.cut

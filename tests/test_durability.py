"""A cell that was answered is in history after the server process is killed (issue 22, point 4)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from kernelserver.execution import Execution
from kernelserver.history import History
from kernelserver.results import Cell, Finished, Outcome, ResultEvent
from kernelserver.subscriptions import Hub, NamespaceEvent, Relay

from helpers import LiveServer, pid_alive, server_pid, start_server, wait_until

ROUNDS = 20  # the old code lost the row in every round: it committed 50 ms after the answer


def _healthy(server: LiveServer) -> bool:
    try:
        return requests.get(server.url + "/health", timeout=1).ok
    except requests.RequestException:
        return False


def _restarted(server: LiveServer, worker: int) -> bool:
    """gunicorn has started a new worker in place of worker, and it answers."""
    return server_pid(server.data_dir) not in (0, worker) and _healthy(server)


def _answered(server: LiveServer, code: str) -> dict[str, Any]:
    """The 200 answer of a cell run in the default namespace."""
    response = requests.post(server.url + "/execute", json={"code": code},
                             headers=server.headers, timeout=60)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _streamed(server: LiveServer, code: str) -> dict[str, Any]:
    """The result line of a streamed cell, returned as soon as it is read (the stream still open)."""
    with requests.post(server.url + "/execute", json={"code": code, "stream": True},
                       headers=server.headers, timeout=60, stream=True) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines(chunk_size=1):
            event = json.loads(line) if line else {}
            if event.get("event") == "result":
                return event
    raise AssertionError("the stream ended without its result")


def _missing(server: LiveServer, answers: list[dict[str, Any]]) -> list[str]:
    """What history lacks of the answered cells, one line each."""
    missing = []
    for answer in answers:
        n = answer["execution_count"]
        response = requests.get(server.url + "/env/execution", params={"id": "default", "n": n},
                                headers=server.headers, timeout=30)
        if response.status_code != 200:
            missing.append(f"cell {n}: {response.status_code} {response.text.strip()}")
            continue
        row = response.json()
        if (row["status"], row["stdout"], row["result"]) != (
                answer["status"], answer["stdout"], answer["result"]):
            missing.append(f"cell {n}: recorded {row['status']} {row['stdout']!r} {row['result']}")
    return missing


@pytest.mark.slow
def test_an_answered_cell_survives_a_kill_of_the_server(tmp_path: Path) -> None:
    live = start_server(tmp_path)
    answers: list[dict[str, Any]] = []
    try:
        for i in range(ROUNDS):
            worker = server_pid(live.data_dir)
            code = f"print('line {i}')\n{i} * 7"
            # Every other cell streamed, killed right after its result line; the others killed
            # right after their 200 answer. Either way no time to flush anything after it.
            answers.append(_streamed(live, code) if i % 2 else _answered(live, code))
            if i < ROUNDS - 1:
                os.kill(worker, signal.SIGKILL)  # the process that holds the history
                # gunicorn starts a new worker, which opens the same history.
                assert wait_until(lambda s=live, w=worker: _restarted(s, w), 30)  # type: ignore[misc]
            else:  # the last: the whole server, master and worker, and a new one started
                os.kill(live.proc.pid, signal.SIGKILL)
                os.kill(worker, signal.SIGKILL)
                live.stop()
                assert wait_until(lambda w=worker: not pid_alive(w), 10)  # type: ignore[misc]
                live = start_server(tmp_path, data_dir=live.data_dir)
        assert [a["stdout"] for a in answers] == [f"line {i}\n" for i in range(ROUNDS)]
        counts = [a["execution_count"] for a in answers]
        assert counts == sorted(set(counts))  # never handed out twice across the kills
        missing = _missing(live, answers)
    finally:
        live.stop()
    assert not missing, f"{len(missing)} of {ROUNDS} answered cells lost:\n" + "\n".join(missing)


# -- the order inside, and the bound on the wait --

def _finished(history: History, n: int) -> Finished:
    execution = Execution("ns", n, Cell(f"{n} + 1"), 1000)
    history.record_submitted("ns", n, execution.code, execution.submitted_at)
    execution.start()
    execution.write_stdout(f"out {n}\n")
    execution.finish(Outcome("ok", result={"text/plain": str(n + 1)}))
    assert execution.final is not None
    return execution.final


def test_a_cell_reads_as_finished_only_once_its_row_is_committed(tmp_path: Path) -> None:
    history = History(str(tmp_path))
    try:
        hub = Hub()
        published: list[NamespaceEvent] = []
        relay = Relay(hub, published.append)  # a namespace's watcher, as the Jupyter front end
        execution = Execution("ns", 1, Cell("print('hi')\n2"), 1000, hub=hub)
        history.record_submitted("ns", 1, execution.code, execution.submitted_at)
        execution.start()
        execution.write_stdout("hi\n")
        before: list[Any] = []

        def record(final: Finished) -> None:
            # Nobody can know the cell finished yet: not a waiter, a reader, or a watcher.
            before.extend([execution.finished, execution.wait(0), execution.snapshot().status,
                           execution.snapshot().stdout,
                           [type(item.event).__name__ for item in published]])
            assert history.commit_finished(final)
            row = history.get("ns", 1)  # on the reading connection: committed, not queued
            before.append(row and (row.status, row.stdout, row.result))

        assert execution.finish(Outcome("ok", result={"text/plain": "2"}), record)
        assert before == [False, False, "running", "hi\n", ["StartedEvent", "OutputEvent"],
                          ("ok", "hi\n", {"text/plain": "2"})]
        assert execution.finished and execution.snapshot().stdout == "hi\n"
        assert isinstance(published[-1].event, ResultEvent)
        relay.close()
    finally:
        history.close()


def test_a_stuck_database_holds_up_one_answer_for_the_bound_then_none(tmp_path: Path) -> None:
    history = History(str(tmp_path))
    try:
        # A commit that does not come back, as on a disk that stopped answering.
        history._commit_lock.acquire()
        try:
            started = time.monotonic()
            assert history.commit_finished(_finished(history, 1), timeout=0.3) is False
            assert time.monotonic() - started >= 0.3
            started = time.monotonic()
            assert history.commit_finished(_finished(history, 2), timeout=0.3) is False
            assert time.monotonic() - started < 0.2  # known stuck: no second wait
        finally:
            history._commit_lock.release()
        # Once it answers again the writer commits the rows left queued, and cells wait again.
        assert wait_until(lambda: history.get("ns", 2) is not None, 10)
        assert history.commit_finished(_finished(history, 3), timeout=0.3) is True
        assert [(r["execution_count"], r["status"]) for r in history.list("ns", 10)] == [
            (1, "ok"), (2, "ok"), (3, "ok")]
        assert history.get("ns", 2) is not None and history.get("ns", 2).stdout == "out 2\n"  # type: ignore[union-attr]
    finally:
        history.close()

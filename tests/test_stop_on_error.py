"""stop_on_error aborts only the cells queued before the failure's reply (issue 22, point 7)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import requests

from kernelserver.execution import Execution
from kernelserver.results import Cell, ResultEvent
from kernelserver.service import Service
from kernelserver.subscriptions import NamespaceEvent

from helpers import LiveServer, start_server, wait_until
from jupyter_ws import KernelClient, of_type

ROUNDS = 150  # over the WebSocket (the old code failed 36-51 rounds of 300)
WATCHERS = 10  # other clients of the kernel: the old code then failed 36-53 rounds of 300, alone ~1 in 1000


# -- the service, where the race is made certain --

def test_a_cell_sent_on_the_failures_result_runs(service: Service) -> None:
    """The next cell is submitted by a watcher of the failure's ResultEvent, on the publishing
    thread: the moment a Jupyter client can first know of the failure. The old code doomed it
    every time (it aborted the group after publishing)."""
    service.create("race")
    group = object()
    followers: list[Execution] = []
    failing: list[Execution] = []
    sent = threading.Event()

    def on_event(item: NamespaceEvent) -> None:
        if isinstance(item.event, ResultEvent) and failing and item.execution is failing[-1]:
            followers.append(service.submit("race", Cell(f"'ran {len(followers)}'"),
                                            stop_group=group))
            sent.set()

    relay = service.relay("race", on_event)
    try:
        for i in range(20):
            sent.clear()
            failing.append(service.submit("race", Cell("1/0"), stop_group=group))
            assert sent.wait(10)
            follower = followers[i]
            assert service.wait(follower, 10)
            assert failing[i].status == "error"
            result = follower.snapshot()
            assert (result.status, result.result) == ("ok", {"text/plain": f"'ran {i}'"}), result
    finally:
        relay.close()


def test_cells_queued_behind_a_failure_are_aborted_and_others_run(service: Service) -> None:
    service.create("queued")
    group, other = object(), object()
    # The failing cell waits in input() until the cells behind it are queued: no timing.
    failing = service.submit("queued", Cell("input('go? ')\n1/0", allow_stdin=True),
                             stop_group=group)
    behind = [service.submit("queued", Cell(f"doomed_{i} = 1"), stop_group=group) for i in range(3)]
    bystander = service.submit("queued", Cell("'other client'"), stop_group=other)
    assert wait_until(lambda: service.provide_input(failing, "go"), 10)
    assert service.wait(bystander, 10) and all(service.wait(e, 10) for e in behind)
    assert failing.status == "error"
    for execution in behind:
        result = execution.snapshot()
        assert result.status == "interrupted" and result.started_at is None
        assert result.error is not None and result.error.ename == "Aborted"
    assert bystander.snapshot().result == {"text/plain": "'other client'"}
    check = service.submit("queued", Cell("[n for n in globals() if n.startswith('doomed')]"))
    assert service.wait(check, 10) and check.snapshot().result == {"text/plain": "[]"}
    # The aborted cells are in history as they were answered.
    rows = {row["execution_count"]: row["status"] for row in service.history_of("queued", 10)}
    assert [rows[e.execution_count] for e in behind] == ["interrupted"] * 3


# -- over the Jupyter WebSocket --

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("stop-on-error"))
    yield live
    live.stop()


@pytest.fixture
def kernel(server: LiveServer) -> Iterator[str]:
    headers = {"Authorization": f"token {server.token}"}
    response = requests.post(server.url + "/api/kernels", json={"name": "python3"},
                             headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    kernel_id: str = response.json()["id"]
    yield kernel_id
    requests.delete(server.url + f"/api/kernels/{kernel_id}", headers=headers, timeout=30)


@pytest.mark.slow
def test_a_cell_sent_after_the_failures_reply_and_idle_runs(server: LiveServer, kernel: str) -> None:
    """The kernel has other clients (more tabs, say): each message goes to them after the sender,
    which gives the sender time to answer the idle before the server moves on. The old code,
    aborting the group only then, aborted 36 to 53 of 300 such cells here."""
    client = KernelClient(server.url, kernel, server.token)
    others: list[KernelClient] = []
    aborted = []
    try:
        others += [KernelClient(server.url, kernel, server.token) for _ in range(WATCHERS)]
        for i in range(ROUNDS):
            failing = client.send("execute_request", {"code": "1/0"})  # stop_on_error: the default
            seen = client.until_idle(failing["msg_id"])
            assert [m["content"]["status"] for m in of_type(seen, "execute_reply")] == ["error"]
            reply, _ = client.execute(f"{i} + 1")
            if reply["content"]["status"] != "ok":
                aborted.append(i)
    finally:
        for other in others:
            other.close()
        client.close()
    assert not aborted, f"{len(aborted)} of {ROUNDS} cells sent after the failure were aborted"


@pytest.mark.slow
def test_cells_queued_behind_a_failure_on_the_socket_are_aborted(server: LiveServer,
                                                                  kernel: str) -> None:
    client = KernelClient(server.url, kernel, server.token)
    try:
        failing = client.send("execute_request", {"code": "input('go? ')\n1/0", "allow_stdin": True})
        request = client.until(lambda m: m["msg_type"] == "input_request")[-1]
        queued = [client.send("execute_request", {"code": f"doomed_{i} = 1"}) for i in range(2)]
        # Queued behind it for sure: sent on the same socket before the input_reply that lets the
        # failing cell go on, and the socket's messages are taken in order.
        client.send("input_reply", {"value": "go"}, channel="stdin", parent=request["header"])
        seen = client.until_idle(queued[-1]["msg_id"])
        replies = {m["parent_header"]["msg_id"]: m["content"] for m in of_type(seen, "execute_reply")}
        assert replies[failing["msg_id"]]["status"] == "error"
        assert [replies[q["msg_id"]] for q in queued] == [{"status": "aborted"}] * 2
        reply, seen = client.execute("[n for n in globals() if n.startswith('doomed')]")
        assert reply["content"]["status"] == "ok"
        assert [m["content"]["data"] for m in of_type(seen, "execute_result")] == [
            {"text/plain": "[]"}]
    finally:
        client.close()

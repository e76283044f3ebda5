"""The shared types: one Outcome, typed stream events whose wire form is the pinned v1 one."""

from __future__ import annotations

import json

import pytest

from kernelserver.encoding import Text, dumps
from kernelserver.results import (
    DisplayEvent,
    ErrorInfo,
    Event,
    ExecutionResult,
    Finished,
    KeepaliveEvent,
    Outcome,
    OutputEvent,
    ResultEvent,
    StartedEvent,
    StateEvent,
    StreamErrorEvent,
    event_from_dict,
)

RESULT = ExecutionResult("ns", 3, "error", stdout="out", stderr="err", displays=({"text/plain": "d"},),
                         error=ErrorInfo("ZeroDivisionError", "division by zero", "Traceback..."),
                         started_at="2026-11-30T10:00:00.000000Z", duration_ms=1.5)

EVENTS: list[tuple[Event, dict[str, object]]] = [
    (OutputEvent("stdout", "hi\n"), {"event": "stdout", "text": "hi\n"}),
    (OutputEvent("stderr", "oops"), {"event": "stderr", "text": "oops"}),
    (DisplayEvent({"image/png": "AAAA"}), {"event": "display", "data": {"image/png": "AAAA"}}),
    (KeepaliveEvent("running"), {"event": "keepalive", "status": "running"}),
    (StreamErrorEvent("stream_lagging", "too slow"),
     {"event": "error", "code": "stream_lagging", "message": "too slow"}),
    (StartedEvent(4, "1 + 1"), {"event": "started", "execution_count": 4, "code": "1 + 1"}),
    (StateEvent("dead"), {"event": "state", "state": "dead"}),
]


@pytest.mark.parametrize(("event", "wire"), EVENTS, ids=[type(e).__name__ + "-" + str(i)
                                                          for i, (e, _) in enumerate(EVENTS)])
def test_events_have_the_pinned_wire_form_and_read_back(event: Event, wire: dict[str, object]) -> None:
    assert event.to_dict() == wire
    assert event_from_dict(json.loads(dumps(event.to_dict()))) == event


def test_the_result_event_is_the_execution_result_with_event_result() -> None:
    event = ResultEvent(Finished.of(RESULT))
    wire = json.loads(dumps(event.to_dict()))
    assert wire == {"event": "result", **RESULT.to_dict()}
    back = event_from_dict(wire)
    assert isinstance(back, ResultEvent) and back.result == RESULT
    assert back.result.stdout == "out" and back.result.error == RESULT.error


def test_a_finished_result_keeps_its_output_in_pieces() -> None:
    final = Finished(RESULT.with_changes(stdout="", stderr=""), Text(["a" * 3, "b"]), Text([]))
    assert isinstance(final.to_dict()["stdout"], Text)
    assert final.to_result().stdout == "aaab" and final.to_result().stderr == ""


def test_unknown_event_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a stream event"):
        event_from_dict({"event": "nonsense"})


@pytest.mark.parametrize("outcome", [
    Outcome("ok"),
    Outcome("ok", result={"text/plain": "2"}, truncated=True),
    Outcome("error", error=ErrorInfo("E", "v", "tb"), restarted=True),
    Outcome.failed("WorkerDied", "the worker process exited with code 3", restarted=True),
], ids=["ok", "ok-truncated", "error-restarted", "failed"])
def test_outcome_round_trips_as_the_worker_reply(outcome: Outcome) -> None:
    reply = json.loads(dumps({"op": "result", "drained": True, **outcome.to_dict()}))
    assert Outcome.from_dict(reply) == outcome

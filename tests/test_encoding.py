"""A finished execution's output stays in pieces: encoded and stored right, never copied whole."""

from __future__ import annotations

import gc
import json
import tracemalloc
import weakref
from pathlib import Path

from kernelserver.encoding import Text, dumps, encode, iter_json
from kernelserver.execution import Execution
from kernelserver.history import History
from kernelserver.results import Outcome

from helpers import ApiClient

# Quotes, escapes, control characters, non-ASCII on both sides of a piece boundary, and a lone
# surrogate (a cell can print one; it must come out as its JSON escape, not an error).
AWKWARD = ['say "hi"\\n', "tab\there\x00\x1b", "é" * 300_000, "😀 end", "\ud800 lone"]


def _finished(pieces: list[str], cap: int = 1 << 24) -> Execution:
    execution = Execution("ns", 1, "code", cap)
    execution.start()
    for piece in pieces:
        execution.write_stdout(piece)
    execution.write_stderr("err")
    execution.finish(Outcome("ok", result={"text/plain": "2"}))
    return execution


def test_pieces_encode_exactly_as_the_joined_text() -> None:
    answer = _finished(AWKWARD).to_dict()
    assert isinstance(answer["stdout"], Text)
    whole = b"".join(iter_json(answer))
    small = dumps(answer)
    decoded = json.loads(whole)
    assert decoded == json.loads(small)
    assert decoded["stdout"] == "".join(AWKWARD)  # the surrogate round-trips as its escape
    assert decoded["stderr"] == "err" and decoded["result"] == {"text/plain": "2"}
    assert len(list(encode(answer))) > 1  # large: sent in pieces, not as one buffer


def test_snapshot_of_a_finished_execution_is_the_joined_text() -> None:
    result = _finished(["a" * 10, "b" * 10]).snapshot()
    assert result.stdout == "a" * 10 + "b" * 10 and result.stderr == "err" and result.ok


def test_finishing_and_answering_never_copy_the_output_whole() -> None:
    output = 8 << 20
    execution = Execution("ns", 1, "code", output)
    execution.start()
    for _ in range(output // 65536):
        execution.write_stdout("x" * 65536)
    tracemalloc.start()
    try:
        execution.finish(Outcome("ok"))
        encoded = sum(len(chunk) for chunk in iter_json(execution.to_dict()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert encoded > output
    # Without pieces, finish() alone joined a second 8 MiB copy.
    assert peak < output / 8, f"peak {peak / 2**20:.1f} MiB while finishing and encoding"


def test_history_stores_pieces_across_blob_boundaries(tmp_path: Path) -> None:
    history = History(str(tmp_path))
    try:
        execution = _finished(AWKWARD[:4] * 3)
        assert execution.final is not None
        history.record_finished(execution.final)
        assert history.flush()
        stored = history.get("ns", 1)
    finally:
        history.close()
    assert stored is not None
    assert stored.stdout == "".join(AWKWARD[:4] * 3) and stored.stderr == "err"
    assert stored.result == {"text/plain": "2"} and stored.status == "ok"


def test_lone_surrogates_cross_the_worker_hop_and_the_answer(papi: ApiClient) -> None:
    # orjson refuses them; the json fallbacks on both sides must carry them, never a 500.
    data = papi.run("display({'text/plain': 'a\\ud800b', 'n': 1}, raw=True)\n'c\\udfffd'")
    assert data["status"] == "ok"
    assert data["displays"] == [{"text/plain": "a\ud800b", "n": 1}]
    assert data["result"] == {"text/plain": "'c\\udfffd'"}
    response = papi.post("/execute", json={"code": "x = 1  # \ud800"})
    assert response.status_code == 200 and response.get_json()["status"] in ("ok", "error")
    papi.run("after = 1")
    # History keeps the surrogate as its escape, and its writer lives on for the next cells.
    codes = [e["code"] for e in papi.get("/env/history?id=default").get_json()["executions"]]
    assert codes[-2:] == ["x = 1  # \\ud800", "after = 1"]


def test_request_bodies_orjson_refuses_are_still_read(papi: ApiClient) -> None:
    response = papi.post("/execute", data=b'{"code": "n = 2**70\\nn", "timeout": NaN}',
                         content_type="application/json")
    assert response.status_code == 400  # json reads NaN; the field check refuses it clearly
    assert "timeout" in response.get_json()["error"]["message"]
    response = papi.post("/execute", data=b'{"code": "1", "timeout": 100000000000000000000000}',
                         content_type="application/json")
    assert response.status_code == 400 and "timeout" in response.get_json()["error"]["message"]


def test_history_writer_keeps_no_output_once_stored(tmp_path: Path) -> None:
    history = History(str(tmp_path))
    try:
        final = _finished(["x" * 100_000]).final
        assert final is not None
        stored = weakref.ref(final)
        history.record_finished(final)
        assert history.flush()
        del final
        gc.collect()
        # An idle writer must not pin the last batch it wrote (up to 16 MiB an execution).
        assert stored() is None
    finally:
        history.close()

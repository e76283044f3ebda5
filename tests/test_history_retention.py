"""History that does not grow without end: retention settings, pruning one namespace, previews."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from kernelserver import history

from helpers import AUTH, ApiClient, wait_until


def client(app: Flask) -> ApiClient:
    return ApiClient(app.test_client())


def counts(api: ApiClient, namespace_id: str) -> list[int]:
    answer = api.get(f"/env/history?id={namespace_id}&limit=1000").get_json()
    return [e["execution_count"] for e in answer["executions"]]


def test_history_keep_leaves_the_newest_per_namespace(make_app: Callable[..., Flask],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "PRUNE_EVERY", 0.2)
    api = client(make_app(backend="inprocess", history_keep=3))
    api.create("a")
    api.create("b")
    for i in range(6):
        api.run(f"print({i})", id="a")
    api.run("1", id="b")
    assert wait_until(lambda: counts(api, "a") == [4, 5, 6], 10), counts(api, "a")
    assert counts(api, "b") == [1]
    # What is gone is gone (code and output); what is kept reads as before.
    assert api.get("/env/execution?id=a&n=2").status_code == 404
    assert api.get("/env/execution?id=a&n=5").get_json()["stdout"] == "4\n"
    assert api.run("2", id="a")["execution_count"] == 7


def test_history_max_age_days_forgets_old_executions(make_app: Callable[..., Flask],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "PRUNE_EVERY", 0.2)
    api = client(make_app(backend="inprocess", history_max_age_days=2 / 86400))  # 2 s
    api.run("1")
    assert counts(api, "default") == [1]
    assert wait_until(lambda: counts(api, "default") == [], 10)
    assert api.run("2")["execution_count"] == 2


def test_delete_history_prunes_one_namespace_and_numbers_never_repeat(
        make_app: Callable[..., Flask], tmp_path: Any) -> None:
    data_dir = str(tmp_path / "kept")
    app = make_app(backend="inprocess", data_dir=data_dir)
    api = client(app)
    api.create("x")
    api.create("y")
    for _ in range(5):
        api.run("1", id="x")
    api.run("1", id="y")
    answer = api.raw.delete("/env/history?id=x&keep=2", headers=AUTH)
    assert answer.status_code == 200 and answer.get_json() == {"id": "x", "deleted": 3, "kept": 2}
    assert counts(api, "x") == [4, 5]
    assert api.raw.delete("/env/history?id=x", headers=AUTH).get_json()["deleted"] == 2
    assert counts(api, "x") == [] and counts(api, "y") == [1]  # the other namespace untouched
    # Nothing left in history, the namespace deleted, the server restarted: still no reuse.
    assert api.post("/env/delete", json={"id": "x"}).status_code == 200
    app.extensions["kernelserver"].close()
    again = client(make_app(backend="inprocess", data_dir=data_dir))
    again.create("x")
    assert again.run("1", id="x")["execution_count"] == 6
    # Bad input: a clear 400 / 404, nothing deleted.
    assert again.raw.delete("/env/history?id=x&keep=-1", headers=AUTH).status_code == 400
    assert again.raw.delete("/env/history?id=nobody", headers=AUTH).status_code == 404
    assert again.raw.delete("/env/history?id=x").status_code == 401
    assert counts(again, "x") == [6]


def test_a_running_cell_is_never_pruned(make_app: Callable[..., Flask]) -> None:
    api = client(make_app(backend="process"))
    started = api.run("import time; time.sleep(1.5); 'done'", wait=0.2)
    assert started["status"] == "running"
    assert api.raw.delete("/env/history?id=default", headers=AUTH).get_json()["deleted"] == 0
    n = started["execution_count"]
    final = api.get(f"/env/execution?id=default&n={n}&wait=10").get_json()
    assert final["result"] == {"text/plain": "'done'"}
    assert counts(api, "default") == [n]


def test_history_lists_a_preview_and_execution_has_the_whole_code(api: ApiClient) -> None:
    code = "x = 1\n" + "# " + "y" * 20_000 + "\nx"
    n = api.run(code)["execution_count"]
    entry = api.get("/env/history?id=default").get_json()["executions"][-1]
    assert entry["execution_count"] == n and entry["code_truncated"] is True
    assert entry["code"] == code[:history.CODE_PREVIEW]
    assert api.get(f"/env/execution?id=default&n={n}").get_json()["code"] == code
    short = api.run("2")["execution_count"]
    listed = api.get("/env/history?id=default").get_json()["executions"][-1]
    assert listed == {**listed, "execution_count": short, "code": "2", "code_truncated": False}


def test_history_shows_a_running_cell_as_running(make_app: Callable[..., Flask]) -> None:
    api = client(make_app(backend="process"))
    api.run("1")
    started = api.run("import time; time.sleep(1.5)", wait=0.3)
    listed = api.get("/env/history?id=default").get_json()["executions"]
    assert [e["status"] for e in listed] == ["ok", "running"]
    assert listed[-1]["started_at"] is not None
    api.get(f"/env/execution?id=default&n={started['execution_count']}&wait=10")
    assert api.get("/env/history?id=default").get_json()["executions"][-1]["status"] == "ok"

"""Mistakes a new user makes (curl's form default, a '+' in a form, a namespace gone with a
restart) get an answer that says what happened and what to do."""

from __future__ import annotations

from pathlib import Path

import requests

from helpers import ApiClient, start_server


def test_json_sent_as_a_form_says_to_add_the_content_type(api: ApiClient) -> None:
    # curl -d '{"code": "1+1"}' without -H 'Content-Type: application/json'
    answer = api.post("/execute", data='{"code": "1+1"}',
                      content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 400
    message = answer.get_json()["error"]["message"]
    assert "-H 'Content-Type: application/json'" in message


def test_a_plus_that_became_a_space_gets_a_hint_and_runs_nothing(api: ApiClient) -> None:
    before = api.run("1")["execution_count"]
    answer = api.post("/execute", data="code=x=1+1", content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 400
    message = answer.get_json()["error"]["message"]
    assert "--data-urlencode" in message and "'x=1+1'" in message and "'x=1 1'" in message
    after = api.run("1")["execution_count"]
    assert after == before + 1  # the cut code never ran
    # Encoded as curl --data-urlencode does it: runs as written.
    assert api.post("/execute", data="code=1%2B1",
                    content_type="application/x-www-form-urlencoded").get_json()["result"] == {
        "text/plain": "2"}
    # A real syntax error with an encoded '+' is the cell's own: a SyntaxError result, no hint.
    real = api.post("/execute", data="code=1+%2B",
                    content_type="application/x-www-form-urlencoded").get_json()
    assert real["status"] == "error" and real["error"]["ename"] == "SyntaxError"
    # Spaces meant as spaces are untouched.
    assert api.post("/execute", data="code=print(1,+2)",
                    content_type="application/x-www-form-urlencoded").get_json()["stdout"] == "1 2\n"


def test_after_a_server_restart_the_404_says_namespaces_do_not_survive_but_history_does(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = start_server(tmp_path, data_dir=data_dir)
    try:
        assert requests.post(first.url + "/env/create", json={"id": "exp1"}, headers=first.headers,
                             timeout=30).status_code == 201
        requests.post(first.url + "/execute", json={"id": "exp1", "code": "x = 1"},
                      headers=first.headers, timeout=30).raise_for_status()
    finally:
        first.stop()
    second = start_server(tmp_path, data_dir=data_dir)
    try:
        answer = requests.post(second.url + "/execute", json={"id": "exp1", "code": "x"},
                               headers=second.headers, timeout=30)
        assert answer.status_code == 404
        message = answer.json()["error"]["message"]
        assert "do not survive a restart of the server" in message
        assert "GET /env/history?id=exp1" in message and "POST /env/create" in message
        history = requests.get(second.url + "/env/history", params={"id": "exp1"},
                               headers=second.headers, timeout=30).json()
        assert [e["code"] for e in history["executions"]] == ["x = 1"]
    finally:
        second.stop()


def test_a_deleted_namespace_says_it_was_deleted_and_a_never_seen_one_how_to_create(
        api: ApiClient) -> None:
    api.create("gone")
    api.run("1", id="gone")
    assert api.post("/env/delete", json={"id": "gone"}).status_code == 200
    message = api.post("/execute", json={"id": "gone", "code": "1"}).get_json()["error"]["message"]
    assert "it was deleted" in message and "GET /env/history?id=gone" in message
    never = api.post("/env/get", json={"id": "never"}).get_json()["error"]["message"]
    assert never == "no namespace 'never'; create it with POST /env/create"


def test_gpus_or_cpus_on_a_one_box_backend_say_which_backend_places_them(
        api: ApiClient, backend: str) -> None:
    answer = api.post("/env/create", json={"id": "wants-gpu", "resources": {"num_gpus": 1}})
    assert answer.status_code == 400
    message = answer.get_json()["error"]["message"]
    assert f"num_gpus need the ray backend, which places namespaces on a cluster; this server " \
           f"runs the {backend} backend" in message
    assert ids(api) == []
    # A memory limit is kept by a worker process, not by cells running inside the server.
    capped = api.post("/env/create", json={"id": "capped", "resources": {"memory": "1G"}})
    if backend == "process":
        assert "(a memory limit works here)" in message and capped.status_code == 201
    else:
        assert "memory limit" not in message and capped.status_code == 503
        assert "cannot limit their memory" in capped.get_json()["error"]["message"]


def ids(api: ApiClient) -> list[str]:
    return [info["id"] for info in api.get("/env/list").get_json()["envs"]]

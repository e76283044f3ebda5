"""The syntax option at the Flask level, on both backends: what a namespace is made with, and the
inprocess backend's one IPython shell per process."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from helpers import ApiClient

pytest.importorskip("IPython", reason="IPython syntax needs `pip install 'kernelserver[notebook]'`")


def test_a_namespace_asks_for_plain_python_or_ipython(api: ApiClient, backend: str) -> None:
    assert api.create("plain", syntax="python").get_json()["syntax"] == "python"
    assert api.run("!echo hi", id="plain")["error"]["ename"] == "SyntaxError"
    assert api.create("ipy", syntax="ipython").get_json()["syntax"] == "ipython"
    answer = api.run("x = !echo hi\nx", id="ipy")
    assert answer["result"] == {"text/plain": "['hi']"}, answer
    answer = api.run("h = display('one', display_id=True)\nh.update('two')", id="ipy")
    assert answer["displays"] == [{"text/plain": "'two'"}]
    api.post("/env/delete", json={"id": "ipy"})


def test_the_inprocess_backend_has_one_ipython_shell(make_app: Callable[..., Flask]) -> None:
    api = ApiClient(make_app(backend="inprocess").test_client())
    assert api.create("first", syntax="ipython").status_code == 201
    refused = api.create("second", syntax="ipython")
    assert refused.status_code == 503, refused.get_json()
    assert "allows one shell" in refused.get_json()["error"]["message"]
    # Once the first is deleted its shell is gone, and another namespace may have one.
    api.post("/env/delete", json={"id": "first"})
    assert api.create("second", syntax="ipython").status_code == 201
    assert api.run("get_ipython() is not None", id="second")["result"] == {"text/plain": "True"}
    api.post("/env/delete", json={"id": "second"})

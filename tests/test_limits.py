"""Resource limits: each is a setting shown in /info; a request may lower the output and repr
limits for one cell, never raise them; what a limit cuts is marked and flagged truncated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from helpers import ApiClient

LIMITS = {"max_body_bytes": 4096, "max_namespaces": 3, "max_queued": 2, "output_cap_bytes": 5000,
          "repr_limit_bytes": 3000, "interrupt_grace": 0.5, "request_read_timeout": 7.0}


def test_every_limit_is_a_setting_shown_in_info(make_app: Callable[..., Flask]) -> None:
    api = ApiClient(make_app(backend="inprocess", **LIMITS).test_client())
    assert api.get("/info").get_json()["limits"] == {
        **LIMITS, "memory_limit": 0, "cull_idle_after": 0.0, "memory_limit_method": "none"}


def test_a_repr_over_the_limit_is_cut_marked_and_flagged(api: ApiClient) -> None:
    data = api.run("'x' * 5000", repr_limit_bytes=1000)
    text = data["result"]["text/plain"]
    assert text.startswith("'xxx") and len(text) < 1100
    assert "4002 more characters truncated" in text
    assert data["truncated"] is True
    # The lower limit was for that cell only.
    data = api.run("'x' * 5000")
    assert data["result"]["text/plain"] == "'" + "x" * 5000 + "'" and data["truncated"] is False


def test_an_image_over_the_repr_limit_is_dropped_with_a_note(api: ApiClient) -> None:
    code = ("class Pic:\n"
            "    def _repr_png_(self):\n"
            "        return b'\\x89PNG' + bytes(3000)\n"
            "    def __repr__(self):\n"
            "        return 'Pic()'\n"
            "display(Pic())\n"
            "print('printed')")
    data = api.run(code, repr_limit_bytes=1000)
    assert data["status"] == "ok" and data["stdout"] == "printed\n"
    [bundle] = data["displays"]
    assert "image/png" not in bundle  # a cut image would be a broken image
    assert bundle["text/plain"].startswith("Pic()\n[kernelserver: image/png of 4008 characters dropped")
    assert data["truncated"] is True
    [bundle] = api.run(code)["displays"]
    assert len(bundle["image/png"]) == 4008


def test_raw_displays_are_bounded_too(api: ApiClient) -> None:
    data = api.run("display({'text/html': '<p>' * 1000, 'application/json': {'k': 'v' * 1000}}, raw=True)",
                   repr_limit_bytes=500)
    [bundle] = data["displays"]
    html = bundle["text/html"]
    assert html.startswith("<p><p>") and "2500 more characters truncated" in html
    assert "application/json" not in bundle and "application/json of 1009 characters dropped" in \
        bundle["text/plain"]
    assert data["truncated"] is True


def test_a_lower_output_cap_keeps_head_and_tail_for_that_cell(api: ApiClient) -> None:
    code = "for i in range(1000):\n    print(f'{i:03d}')"
    data = api.run(code, output_cap_bytes=8)
    stdout = data["stdout"]
    assert stdout.startswith("000\n\n[kernelserver: output truncated") and stdout.endswith("kept]\n999\n")
    assert "3992 characters dropped here; 4000 in all, the first 4 and last 4 kept" in stdout
    assert data["truncated"] is True
    assert api.run(code)["stdout"] == "".join(f"{i:03d}\n" for i in range(1000))


def test_an_output_cap_of_zero_keeps_only_the_marker(api: ApiClient) -> None:
    data = api.run("print('secret-ish')", output_cap_bytes=0)
    assert "secret-ish" not in data["stdout"] and "11 characters dropped" in data["stdout"]
    assert data["truncated"] is True


@pytest.mark.parametrize("field", ["output_cap_bytes", "repr_limit_bytes"])
def test_asking_above_the_servers_limit_is_refused_and_runs_nothing(make_app: Callable[..., Flask],
                                                                    field: str) -> None:
    api = ApiClient(make_app(backend="inprocess", **{field: 1000}).test_client())
    api.run("ran = 0")
    response = api.post("/execute", json={"code": "ran = 1", field: 1001})
    assert response.status_code == 400
    assert response.get_json() == {"error": {
        "code": "limit_exceeded", "limit": field, "max": 1000,
        "message": f"{field} 1001 is above this server's limit of 1000; a request may only lower it "
                   f"(the server's setting {field} raises it)"}}
    after = api.run("ran")
    assert after["result"] == {"text/plain": "0"} and after["execution_count"] == 2
    assert api.run("ran = 2", **{field: 1000})["status"] == "ok"  # the limit itself is allowed


@pytest.mark.parametrize(("value", "why"), [(-1, "must be 0 or more"), ("lots", "must be an integer"),
                                             (True, "must be an integer"), (2**70, "out of range"),
                                             (1.5, "must be an integer")])
@pytest.mark.parametrize("field", ["output_cap_bytes", "repr_limit_bytes"])
def test_a_malformed_limit_is_a_clear_400(make_app: Callable[..., Flask], field: str, value: Any,
                                          why: str) -> None:
    api = ApiClient(make_app(backend="inprocess").test_client())
    response = api.post("/execute", json={"code": "1", field: value})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "bad_request" and field in error["message"] and why in error["message"]


def test_limits_from_a_form_post(make_app: Callable[..., Flask]) -> None:
    api = ApiClient(make_app(backend="inprocess").test_client())
    response = api.post("/execute", data={"code": "'y' * 100", "repr_limit_bytes": "10"})
    assert response.status_code == 200 and response.get_json()["truncated"] is True

"""Auth is a policy per blueprint: Bearer and token schemes everywhere; the query only on upgrades."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from flask import Blueprint, Flask

from kernelserver.errors import Unauthorized
from kernelserver.web.auth import V1_POLICY, TokenPolicy

from helpers import AUTH, TOKEN

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade"}
JUPYTER_LIKE = TokenPolicy(schemes=("token", "bearer"), query_param="token")


@pytest.mark.parametrize(("policy", "headers", "args", "ok"), [
    (V1_POLICY, {"Authorization": f"Bearer {TOKEN}"}, {}, True),
    (V1_POLICY, {"Authorization": f"bearer {TOKEN}"}, {}, True),
    (V1_POLICY, {"Authorization": f"token {TOKEN}"}, {}, True),
    (V1_POLICY, {"Authorization": f"TOKEN {TOKEN}"}, {}, True),
    (V1_POLICY, {}, {"token": TOKEN}, False),
    (V1_POLICY, {"Authorization": "Bearer wrong"}, {}, False),
    (JUPYTER_LIKE, {"Authorization": f"token {TOKEN}"}, {}, True),
    (JUPYTER_LIKE, {"Authorization": f"Bearer {TOKEN}"}, {}, True),
    (JUPYTER_LIKE, {}, {"token": TOKEN}, True),
    (JUPYTER_LIKE, {}, {"token": "wrong"}, False),
    (JUPYTER_LIKE, {"Authorization": "Basic abc"}, {}, False),
], ids=["v1-bearer", "v1-bearer-lower", "v1-token-scheme", "v1-token-upper", "v1-query", "v1-wrong",
        "jup-token", "jup-bearer", "jup-query", "jup-query-wrong", "jup-basic"])
def test_token_policies(policy: TokenPolicy, headers: dict[str, str], args: dict[str, str],
                        ok: bool) -> None:
    if ok:
        policy.check("/x", headers, args, TOKEN)
    else:
        with pytest.raises(Unauthorized):
            policy.check("/x", headers, args, TOKEN)


def test_missing_token_message_names_every_accepted_way() -> None:
    with pytest.raises(Unauthorized, match=r"'Authorization: Token <token>' or "
                                           r"'Authorization: Bearer <token>' or \?token=<token>"):
        JUPYTER_LIKE.check("/x", {}, {}, TOKEN)


def test_unknown_scheme_names_the_expected_ones_and_echoes_nothing() -> None:
    for header in ("Basic abc", TOKEN):  # a bare token is taken for a scheme: never echoed
        with pytest.raises(Unauthorized) as caught:
            V1_POLICY.check("/x", {"Authorization": header}, {}, TOKEN)
        message = caught.value.message
        assert "scheme is not accepted (schemes: bearer, token)" in message
        assert "abc" not in message and TOKEN not in message


def test_public_paths_and_no_auth_need_no_token() -> None:
    V1_POLICY.check("/health", {}, {}, TOKEN)
    V1_POLICY.check("/env/list", {}, {}, None)


def test_each_blueprint_is_checked_with_its_own_policy(make_app: Callable[..., Flask]) -> None:
    app = make_app(backend="inprocess")
    other = Blueprint("other", __name__)
    other.add_url_rule("/other/ping", "ping", lambda: {"pong": True})
    other.add_url_rule("/other/socket", "socket", lambda: {"pong": True}, websocket=True)
    app.extensions["kernelserver.guard"].protect("other", JUPYTER_LIKE)
    app.register_blueprint(other)
    client = app.test_client()
    token_header = {"Authorization": f"token {TOKEN}"}
    assert client.get("/other/ping", headers=token_header).status_code == 200
    assert client.get("/other/ping").status_code == 401
    # A token in the URL only where headers cannot go: a browser's WebSocket upgrade.
    assert client.get(f"/other/ping?token={TOKEN}").status_code == 401
    assert client.get(f"/other/socket?token={TOKEN}", headers=UPGRADE).status_code == 200
    # The v1 routes take both schemes too, but never the query.
    assert client.get("/env/list", headers=token_header).status_code == 200
    assert client.get(f"/env/list?token={TOKEN}", headers=UPGRADE).status_code == 401
    assert client.get("/env/list", headers=AUTH).status_code == 200
    # The Host check applies to every blueprint.
    assert client.get("/other/ping", headers={**token_header, "Host": "evil.example"}).status_code == 403


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "token", "Token"])
@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/execute", {"code": "1 + 1"}), ("GET", "/env/list", None),
    ("GET", "/api/kernels", None), ("GET", "/api/kernelspecs", None)])
def test_both_schemes_on_v1_and_jupyter_routes(make_app: Callable[..., Flask], scheme: str,
                                               method: str, path: str, body: object) -> None:
    client = make_app(backend="inprocess").test_client()
    response = client.open(path, method=method, json=body,
                           headers={"Authorization": f"{scheme} {TOKEN}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    refused = client.open(path, method=method, json=body, headers={"Authorization": f"Basic {TOKEN}"})
    assert refused.status_code == 401
    assert re.search(r"scheme is not accepted \(schemes: (bearer, token|token, bearer)\)",
                     refused.get_data(as_text=True))
    assert TOKEN not in refused.get_data(as_text=True)


@pytest.mark.parametrize("token", [TOKEN, None], ids=["token", "no-auth"])
def test_plain_get_on_the_channels_route_says_it_is_a_websocket(
        make_app: Callable[..., Flask], token: str | None) -> None:
    app = make_app(backend="inprocess", token=token, no_auth=token is None)
    client = app.test_client()
    kernel = client.post("/api/kernels", json={}, headers=AUTH).get_json()["id"]
    # With a token, without one, for a kernel that exists and one that does not: the same 400,
    # so an unauthenticated client learns only that the route is a WebSocket one.
    answers = [client.get(f"/api/kernels/{k}/channels", headers=h)
               for k in (kernel, "nope") for h in (AUTH, {})]
    for response in answers:
        assert response.status_code == 400, response.get_data(as_text=True)
        assert "this is a WebSocket endpoint" in response.get_json()["message"]
        assert "docs/deployment.md" in response.get_json()["message"]
    assert len({r.get_data() for r in answers}) == 1
    # The upgrade itself still needs the token.
    if token:
        upgrade = client.get(f"/api/kernels/{kernel}/channels", headers=UPGRADE)
        assert upgrade.status_code == 401


# Past the guard, the upgrade reaches the channels route, which answers 404 for an unknown kernel.
PASSES = 404


@pytest.mark.parametrize(("origin", "allowed", "status"), [
    (None, (), PASSES),
    ("http://localhost", (), PASSES),
    ("http://evil.example", (), 403),
    ("null", (), 403),
    ("http://localhost:9999", (), 403),
    ("https://lab.example:8888", ("https://lab.example:8888",), PASSES),
    ("https://lab.example:8888/", ("https://LAB.example:8888",), PASSES),
    ("http://anything.example", ("*",), PASSES),
], ids=["no-origin", "same-origin", "other-site", "null-origin", "other-port", "allowed",
        "allowed-case-and-slash", "star"])
def test_websocket_upgrades_check_the_origin(make_app: Callable[..., Flask], origin: str | None,
                                             allowed: tuple[str, ...], status: int) -> None:
    app = make_app(backend="inprocess", allowed_origins=allowed)
    headers = {**AUTH, **UPGRADE, **({"Origin": origin} if origin else {})}
    response = app.test_client().get("/api/kernels/nope/channels", headers=headers)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["code"] == ("origin_not_allowed" if status == 403
                                           else "namespace_not_found")
    # A plain request is not a WebSocket: CORS rules (none here) guard it, not the Origin check.
    assert app.test_client().get("/health", headers={"Origin": "http://evil.example"}).status_code == 200

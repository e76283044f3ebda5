"""Auth is a policy per blueprint: the v1 API takes Bearer only; another front end may differ."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Blueprint, Flask

from kernelserver.errors import Unauthorized
from kernelserver.web.auth import V1_POLICY, TokenPolicy

from conftest import AUTH, TOKEN

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade"}
JUPYTER_LIKE = TokenPolicy(schemes=("token", "bearer"), query_param="token")


@pytest.mark.parametrize(("policy", "headers", "args", "ok"), [
    (V1_POLICY, {"Authorization": f"Bearer {TOKEN}"}, {}, True),
    (V1_POLICY, {"Authorization": f"bearer {TOKEN}"}, {}, True),
    (V1_POLICY, {"Authorization": f"token {TOKEN}"}, {}, False),
    (V1_POLICY, {}, {"token": TOKEN}, False),
    (V1_POLICY, {"Authorization": "Bearer wrong"}, {}, False),
    (JUPYTER_LIKE, {"Authorization": f"token {TOKEN}"}, {}, True),
    (JUPYTER_LIKE, {"Authorization": f"Bearer {TOKEN}"}, {}, True),
    (JUPYTER_LIKE, {}, {"token": TOKEN}, True),
    (JUPYTER_LIKE, {}, {"token": "wrong"}, False),
    (JUPYTER_LIKE, {"Authorization": "Basic abc"}, {}, False),
], ids=["v1-bearer", "v1-bearer-lower", "v1-token-scheme", "v1-query", "v1-wrong",
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
    # The v1 routes keep theirs: Bearer only.
    assert client.get("/env/list", headers=token_header).status_code == 401
    assert client.get(f"/env/list?token={TOKEN}", headers=UPGRADE).status_code == 401
    assert client.get("/env/list", headers=AUTH).status_code == 200
    # The Host check applies to every blueprint.
    assert client.get("/other/ping", headers={**token_header, "Host": "evil.example"}).status_code == 403


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

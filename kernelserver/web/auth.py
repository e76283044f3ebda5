"""Who may call: the Host check on every request, then the token policy of the request's blueprint."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app, request

from ..config import host_without_port, is_loopback
from ..errors import HostNotAllowed, OriginNotAllowed, Unauthorized
from .websocket import is_upgrade


@dataclass(frozen=True)
class HostCheck:
    """Against DNS rebinding: while bound to loopback, only loopback names (and allowed ones)."""

    enabled: bool
    allowed: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> HostCheck:
        """On when the server is bound to a loopback address."""
        return cls(is_loopback(config["host"]), frozenset(h.lower() for h in config["allowed_hosts"]))

    def check(self, host_header: str) -> None:
        """HostNotAllowed unless the Host header names this server."""
        if not self.enabled:
            return
        host = host_without_port(host_header)
        if not (is_loopback(host) or host.lower() in self.allowed):
            raise HostNotAllowed(
                f"Host {host_header!r} is not allowed: the server is bound to loopback; "
                "use --allow-host to accept another name"
            )


@dataclass(frozen=True)
class TokenPolicy:
    """How one front end's requests carry the token, and which of its paths need none."""

    # Authorization: <scheme> <token>, lower case. Both everywhere: Jupyter clients send
    # `token`, HTTP clients `Bearer`, and one credential should not depend on the route.
    schemes: tuple[str, ...] = ("bearer", "token")
    query_param: str | None = None  # also ?<param>=<token> on upgrades (browsers' WebSockets)
    public_paths: frozenset[str] = field(default_factory=frozenset)

    def given(self, headers: Any, args: Any) -> str | None:
        """The token the request carries, if it carries one the policy accepts."""
        scheme, _, value = headers.get("Authorization", "").partition(" ")
        if scheme.lower() in self.schemes and value.strip():
            return str(value.strip())
        if self.query_param is not None and args.get(self.query_param):
            return str(args[self.query_param])
        return None

    def check(self, path: str, headers: Any, args: Any, token: str | None) -> None:
        """Unauthorized unless the path is public, auth is off, or the right token came."""
        if token is None or path in self.public_paths:
            return
        given = self.given(headers, args)
        if given is None:
            shown = " or ".join(f"'Authorization: {s.capitalize()} <token>'" for s in self.schemes)
            if self.query_param:
                shown += f" or ?{self.query_param}=<token>"
            scheme = headers.get("Authorization", "").strip().partition(" ")[0]
            if scheme and scheme.lower() not in self.schemes:
                # Neither the scheme nor the value is echoed: a header without a scheme is
                # the bare token, and this message may be shown or logged.
                raise Unauthorized("missing token: the Authorization header's scheme is not "
                                   f"accepted (schemes: {', '.join(self.schemes)}): send {shown}")
            raise Unauthorized(f"missing token: send {shown}")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("wrong token")


V1_POLICY = TokenPolicy(public_paths=frozenset({"/health", "/openapi.json"}))


@dataclass(frozen=True)
class OriginCheck:
    """Against cross-site WebSocket hijacking: a web page may open a WebSocket to 127.0.0.1, and
    no CORS rule stops it. An upgrade whose Origin is not this server (or allowed) is refused."""

    allowed: frozenset[str] = frozenset()  # whole origins, e.g. https://lab.example:8888, or *

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OriginCheck:
        """The allowed_origins setting."""
        return cls(frozenset(o.lower().rstrip("/") for o in config["allowed_origins"]))

    def check(self, origin: str | None, host_header: str) -> None:
        """OriginNotAllowed unless the upgrade comes from no page, this server, or an allowed one."""
        if origin is None:
            return  # not a browser: scripts, jupyter_server, Node clients send none
        shown = origin.lower().rstrip("/")
        if "*" in self.allowed or shown in self.allowed:
            return
        if urlsplit(shown).netloc == host_header.lower():
            return  # a page served by this server itself
        raise OriginNotAllowed(
            f"a WebSocket from a page at {origin!r} is refused: it is not this server "
            f"({host_header}); allow it with --allow-origin if it is yours")


def public(view: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a view as needing no token: it must answer without reading or revealing any state."""
    view.kernelserver_public = True  # type: ignore[attr-defined]
    return view


class Guard:
    """The app's before-request check: Host, the Origin of a WebSocket upgrade, then the token
    policy of the request's blueprint."""

    def __init__(self, token: str | None, hosts: HostCheck, origins: OriginCheck,
                 default: TokenPolicy) -> None:
        self.token = token
        self.hosts = hosts
        self.origins = origins
        self.default = default  # for requests that matched no blueprint (404, 405)
        self.policies: dict[str, TokenPolicy] = {}

    def protect(self, blueprint: str, policy: TokenPolicy) -> None:
        """Check the requests of this blueprint with policy."""
        self.policies[blueprint] = policy

    def __call__(self) -> None:
        self.hosts.check(request.host)
        upgrade = is_upgrade(request.environ)
        if upgrade:
            self.origins.check(request.headers.get("Origin"), request.host)
        view = current_app.view_functions.get(request.endpoint or "")
        if getattr(view, "kernelserver_public", False):
            return
        policy = self.policies.get(request.blueprint or "", self.default)
        # A token in the URL only where a header cannot go: on a browser's WebSocket upgrade.
        policy.check(request.path, request.headers, request.args if upgrade else {}, self.token)


def install(app: Flask, token: str | None, config: dict[str, Any]) -> Guard:
    """Put the guard in front of every request of app; blueprints add their policies to it."""
    guard = Guard(token, HostCheck.from_config(config), OriginCheck.from_config(config), V1_POLICY)
    app.before_request(guard)
    app.extensions["kernelserver.guard"] = guard
    return guard

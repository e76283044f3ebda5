"""The web console: a static page at GET / that talks to the v1 API with the token it is given.

The page holds no data and needs no token to load: it reads the token from the URL fragment
(which browsers never send), keeps it in sessionStorage and sends it only as a header. Outputs
are put in the page as text, images as data: URLs, HTML only inside a sandboxed iframe; the
Content-Security-Policy below makes anything else (inline script, remote origins) refused.
"""

from __future__ import annotations

from importlib.resources import files

from flask import Blueprint, Flask, Response

from ...errors import NotFound
from ..auth import TokenPolicy

bp = Blueprint("console", __name__)

ASSETS = {"app.js": "text/javascript", "style.css": "text/css",
          # loaded by HTML outputs' sandboxed frames (opaque origin, the page's inherited CSP)
          "frame.js": "text/javascript", "frame.css": "text/css"}
POLICY = TokenPolicy(public_paths=frozenset({"/", *(f"/console/{name}" for name in ASSETS)}))
# No inline script or style, nothing from another origin; HTML outputs go in sandboxed srcdoc
# iframes (which inherit this policy: only the console's own frame.js runs there), images and
# the page's icon in data: URLs.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")


def _static(name: str, mimetype: str) -> Response:
    body = files("kernelserver.web.console").joinpath("static").joinpath(name).read_bytes()
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"  # a new version of the server, a new page
    return response


@bp.get("/")
def page() -> Response:
    return _static("index.html", "text/html")


@bp.get("/console/<name>")
def asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFound(f"no console file {name!r}")
    return _static(name, ASSETS[name])


def register(app: Flask) -> None:
    """Serve the console from app: its files need no token, everything they call does."""
    app.extensions["kernelserver.guard"].protect(bp.name, POLICY)
    app.register_blueprint(bp)


__all__ = ["CSP", "register"]

"""The floor: a constant-JSON Flask route under kernelserver's own gunicorn configuration.

Run as `python bench/floor.py PORT`. Any Flask + gunicorn design pays at least this per request,
so the execute round trip is compared with it.
"""

from __future__ import annotations

import sys

from flask import Flask, Response

from kernelserver.config import load_config
from kernelserver.web.serving import gunicorn_options, run_gunicorn

ANSWER = b'{"status":"ok","stdout":"","stderr":"","result":{"text/plain":"2"}}\n'


def floor_app() -> Flask:
    """One POST route that reads its JSON body and answers a constant."""
    app = Flask("floor")

    @app.post("/floor")
    def floor() -> Response:
        from flask import request

        request.get_json()
        return Response(ANSWER, mimetype="application/json")

    return app


if __name__ == "__main__":
    config = load_config({"port": int(sys.argv[1]), "token": "unused-by-the-floor"})
    run_gunicorn(config, gunicorn_options(config, None, None), load=floor_app)

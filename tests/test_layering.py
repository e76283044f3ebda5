"""Data flows one way: the worker and the client import no server code (DESIGN.md section 4)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERVER_ONLY = ("flask", "werkzeug", "gunicorn", "kernelserver.app", "kernelserver.api",
               "kernelserver.service", "kernelserver.registry", "kernelserver.namespace",
               "kernelserver.execution", "kernelserver.subscriptions", "kernelserver.history")


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running code."""
    probe = (f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize(("what", "code", "forbidden"), [
    ("worker", "import kernelserver.backends.worker",
     SERVER_ONLY + ("kernelserver.backends.process", "requests", "sqlite3")),
    ("fork server", "import kernelserver.backends.forkserver", SERVER_ONLY),
    ("client", "import kernelserver.client", SERVER_ONLY),
    ("exec --help", "from kernelserver.cli import main\nimport sys\nsys.argv = ['kernelserver', "
     "'exec', '--help']\ntry:\n    main()\nexcept SystemExit:\n    pass", SERVER_ONLY),
    ("check --help", "from kernelserver.cli import main\nimport sys\nsys.argv = ['kernelserver', "
     "'check', '--help']\ntry:\n    main()\nexcept SystemExit:\n    pass", SERVER_ONLY),
], ids=["worker", "forkserver", "client", "exec-help", "check-help"])
def test_imports_stay_on_their_side(what: str, code: str, forbidden: tuple[str, ...]) -> None:
    loaded = loaded_after(code)
    assert sorted(loaded & set(forbidden)) == [], f"{what} loads server modules"


def test_the_service_imports_no_web_framework() -> None:
    loaded = loaded_after("import kernelserver.service")
    assert sorted(loaded & {"flask", "werkzeug", "gunicorn", "kernelserver.app",
                            "kernelserver.api", "kernelserver.streaming"}) == []


def test_serve_still_finds_gunicorn() -> None:
    # The other side of the lazy import: serve's help works and names its options.
    out = subprocess.run([sys.executable, "-m", "kernelserver.cli", "serve", "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "process|inprocess" in out

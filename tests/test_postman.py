"""docs/postman_collection.json, run with newman against a real server: every request passes its
tests with the token, and the requests that need one fail without it."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import LiveServer, start_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = ROOT / "docs" / "postman_collection.json"
NEWMAN = ROOT / "tests" / "js" / "node_modules" / ".bin" / "newman"
NO_TOKEN_NEEDED = {"Health", "OpenAPI document"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    if shutil.which("node") is None or not NEWMAN.exists():
        pytest.skip("needs Node and `npm ci` in tests/js (.ci/run does it)")
    live = start_server(tmp_path_factory.mktemp("postman"))
    yield live
    live.stop()


def newman(server: LiveServer, token: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str],
                                                                      dict[str, Any]]:
    """Run the collection against server with token; newman's exit and its JSON report."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        ["node", str(NEWMAN), "run", str(COLLECTION),
         "--env-var", f"baseUrl={server.url}", "--env-var", f"token={token}",
         "--reporters", "cli,json", "--reporter-json-export", str(report),
         "--disable-unicode", "--color", "off", "--timeout-request", "30000"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(report.read_text())


def item_names() -> list[str]:
    return [item["name"] for item in json.loads(COLLECTION.read_text())["item"]]


def failed(execution: dict[str, Any]) -> list[str]:
    return [a["assertion"] for a in execution.get("assertions", []) if a.get("error")]


def test_every_request_passes_its_tests(server: LiveServer, tmp_path: Path) -> None:
    done, report = newman(server, server.token, tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    run = report["run"]
    executions = run["executions"]
    assert [e["item"]["name"] for e in executions] == item_names()
    for execution in executions:
        name = execution["item"]["name"]
        assert execution.get("assertions"), f"{name}: no tests"
        assert not failed(execution), (name, failed(execution))
    assert run["failures"] == [], run["failures"]
    stats = run["stats"]
    assert stats["assertions"]["failed"] == 0 and stats["testScripts"]["failed"] == 0
    assert stats["assertions"]["total"] >= 2 * len(executions)


def test_a_wrong_token_fails_every_request_that_needs_one(server: LiveServer, tmp_path: Path) -> None:
    done, report = newman(server, "not-" + server.token, tmp_path)
    assert done.returncode != 0, done.stdout[-4000:]
    executions = report["run"]["executions"]
    assert [e["item"]["name"] for e in executions] == item_names()
    for execution in executions:
        name = execution["item"]["name"]
        if name in NO_TOKEN_NEEDED:
            assert execution["response"]["code"] == 200, name
            assert execution["assertions"] and not failed(execution), (name, failed(execution))
        else:
            assert execution["response"]["code"] == 401, name
            assert failed(execution), f"{name}: its tests pass on a 401"

"""Every shell and Python example in the README runs as written against a real server.

Blocks marked `<!-- not run ... -->` (a synopsis, the set-up commands, JupyterLab) or run by a
test of their own (`<!-- jupyter-ci-script -->`) are the only ones left out; a new example is
run by default. The only change made to a block is the port: the README's 5000 becomes the test
server's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernelserver import tokenfile

from helpers import LiveServer, start_server

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^(?P<before>[^\n]*)\n```(?P<lang>sh|python)\n(?P<body>.*?)\n```$", re.S | re.M)
OWN_TEST = ("<!-- jupyter-ci-script -->",)
BIN = Path(sys.executable).parent


def examples() -> list[tuple[str, str, str]]:
    """(language, first line, body) of every example the README expects to run."""
    found = []
    for match in FENCE.finditer(README.read_text()):
        before = match["before"].strip()
        if before.startswith("<!-- not run") or before in OWN_TEST:
            continue
        found.append((match["lang"], match["body"].splitlines()[0], match["body"]))
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server started as the README's set-up starts one: it makes its own token."""
    live = start_server(tmp_path_factory.mktemp("readme"), token="")
    yield live
    live.stop()


def run_example(lang: str, body: str, server: LiveServer, cwd: Path) -> subprocess.CompletedProcess[str]:
    port = server.url.rsplit(":", 1)[1]
    body = body.replace("127.0.0.1:5000", f"127.0.0.1:{port}")
    # A reader's shell after the set-up and the quickstart's first line: kernelserver on PATH
    # (`. .venv/bin/activate`), the server's data dir, and KERNELSERVER_TOKEN exported.
    token = tokenfile.read(str(server.data_dir))
    assert token is not None
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "KERNELSERVER_DATA_DIR": str(server.data_dir), "KERNELSERVER_TOKEN": token["token"]}
    env.pop("KERNELSERVER_URL", None)
    command = ["bash", "-e", "-o", "pipefail", "-c", body] if lang == "sh" else [sys.executable, "-c", body]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_readme_has_examples_to_run() -> None:
    assert len(examples()) >= 5


@pytest.mark.parametrize(("lang", "first", "body"), examples(),
                         ids=lambda v: v[:40] if isinstance(v, str) else v)
def test_readme_example_runs_as_written(lang: str, first: str, body: str, server: LiveServer,
                                        tmp_path: Path) -> None:
    if "| jq" in body and shutil.which("jq") is None:
        pytest.skip("the example pipes into jq: apt-get install jq (.ci/run does)")
    done = run_example(lang, body, server, tmp_path)
    shown = f"\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    assert done.returncode == 0, shown
    # No API error and no failed cell hides behind curl's exit code 0.
    assert '{"error": {"code"' not in done.stdout and '"status": "error"' not in done.stdout, shown
    assert '"status":"error"' not in done.stdout.replace(" ", ""), shown
    assert "status=error" not in done.stdout and "Traceback" not in done.stderr, shown
    for png in tmp_path.glob("*.png"):  # what an example saved is what it says it is
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 1000, png
    for expected in re.findall(r"#\s*(\S[^#\n]*?)\s*$", body, re.M):
        # Comments that state an output ("# ok 45") are checked; others are prose.
        if lang == "python" and re.fullmatch(r"(ok 45|error ZeroDivisionError)", expected):
            assert expected in done.stdout, shown


def test_the_setup_command_installs_what_the_examples_import() -> None:
    """The examples ran here with the test extra; a reader has only the set-up command's install."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    project = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]
    installed = {re.split(r"[<>=;\[ ]", spec)[0].lower()
                 for spec in project["dependencies"] + project["optional-dependencies"]["notebook"]}
    readme = README.read_text()
    assert ".venv/bin/pip install '.[notebook]' && .venv/bin/kernelserver serve" in readme
    imported = set()
    for _lang, _first, body in examples():
        for found in re.findall(r"(?:^|[\s;\"])(?:from (\w+)[\w.]* import|import (\w+))",
                                body.replace("\\n", "\n")):
            imported.add(found[0] or found[1])
    third_party = imported - set(sys.stdlib_module_names) - {"kernelserver"}
    assert {"numpy", "matplotlib", "tqdm"} <= third_party  # the parse found them
    assert third_party <= installed, third_party - installed

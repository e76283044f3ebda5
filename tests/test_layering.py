"""Data flows one way: the worker and the client import no server code (DESIGN.md section 4)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SERVER_ONLY = ("flask", "werkzeug", "gunicorn", "kernelserver.web.app", "kernelserver.web.api",
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
    assert sorted(loaded & {"flask", "werkzeug", "gunicorn", "kernelserver.web.app",
                            "kernelserver.web.api", "kernelserver.web.streaming"}) == []


def test_serve_still_finds_gunicorn() -> None:
    # The other side of the lazy import: serve's help works and names its options.
    out = subprocess.run([sys.executable, "-m", "kernelserver.cli", "serve", "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "process|inprocess" in out


PACKAGE = Path(__file__).resolve().parent.parent / "kernelserver"
WEB_FRAMEWORKS = ("flask", "werkzeug", "gunicorn", "flask_sock", "simple_websocket")
SHARED = {"kernelserver", "kernelserver.config", "kernelserver.errors", "kernelserver.results",
          "kernelserver.encoding"}
CORE = ("kernelserver.service", "kernelserver.registry", "kernelserver.namespace",
        "kernelserver.execution", "kernelserver.subscriptions", "kernelserver.history",
        "kernelserver.datadir")


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, anywhere in it (lazy imports too), absolute."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                # `from . import x` imports the module x when there is one.
                found.update(f"{module}.{alias.name}" for alias in node.names
                             if is_module(f"{module}.{alias.name}"))
            else:
                module = node.module or ""
            found.add(module)
    return found


def is_module(dotted: str) -> bool:
    """Whether kernelserver.x.y names a module or package of the source tree."""
    base = PACKAGE.parent.joinpath(*dotted.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def source_files(*under: str) -> list[Path]:
    return sorted(p for sub in under for p in (PACKAGE / sub).rglob("*.py")) if under else \
        sorted(PACKAGE.rglob("*.py"))


def test_only_web_imports_a_web_framework() -> None:
    offenders = {}
    for path in source_files():
        if (PACKAGE / "web") in path.parents:
            continue
        bad = {m for m in imported_modules(path) if m.split(".")[0] in WEB_FRAMEWORKS}
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert offenders == {}


def test_the_runner_imports_only_the_shared_modules() -> None:
    offenders = {}
    for path in source_files("runner"):
        ours = {m for m in imported_modules(path) if m.startswith("kernelserver")}
        bad = {m for m in ours if not m.startswith("kernelserver.runner") and m not in SHARED}
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert offenders == {}


def test_the_runner_loads_nothing_of_the_server() -> None:
    loaded = loaded_after("import kernelserver.runner.executor, kernelserver.runner.introspect, "
                          "kernelserver.runner.display, kernelserver.runner.probe")
    ours = {m for m in loaded if m.startswith("kernelserver")}
    assert sorted(m for m in ours if not m.startswith("kernelserver.runner") and m not in SHARED) == []
    assert sorted(loaded & set(WEB_FRAMEWORKS)) == []


def test_the_ray_actor_loads_no_core_module() -> None:
    loaded = loaded_after("import kernelserver.backends.ray_actor")
    assert sorted(loaded & set(CORE)) == [] and not any(m.startswith("kernelserver.web") for m in loaded)



def test_no_module_is_over_400_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in source_files()
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}

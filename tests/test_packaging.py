"""What cannot be built here (no Docker engine, no conda) is checked for agreement instead."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_runtime() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = {}
    for spec in data["project"]["dependencies"]:
        req = Requirement(spec)
        found[canonicalize_name(req.name)] = str(req.specifier)
    return found


def _conda_dependencies() -> tuple[dict[str, str], list[str], str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda: dict[str, str] = {}
    pip: list[str] = []
    python = ""
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep["pip"]
            continue
        name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", dep).groups()  # type: ignore[union-attr]
        if name == "python":
            python = spec
        elif name != "pip":
            conda[canonicalize_name(name)] = str(SpecifierSet(spec))  # in packaging's order
    return conda, pip, python


def test_environment_yml_has_every_runtime_dependency_with_the_same_bounds() -> None:
    conda, pip, python = _conda_dependencies()
    assert conda == _pyproject_runtime()
    assert pip == ["."]  # the package itself, from this checkout
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python == requires
    assert yaml.safe_load((ROOT / "environment.yml").read_text())["channels"][0] == "conda-forge"


def test_dockerfile_runs_as_non_root_with_healthcheck_and_env_token() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM \S*(mamba|conda)\S*", text, re.M)
    assert "environment.yml" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*", text, re.M) and "/health" in text
    cmd = re.search(r"^CMD (.*)$", text, re.M)
    assert cmd is not None
    assert '"serve", "--host", "0.0.0.0"' in cmd.group(1)
    assert "--token" not in cmd.group(1)  # the token comes from KERNELSERVER_TOKEN, not the image
    assert "KERNELSERVER_TOKEN" in text

"""The box's environments a namespace may run in: the server's own Python, configured ones,
Python kernelspecs and conda environments (each runs kernelserver's own worker), and every other
installed Jupyter kernel (IRkernel, bash_kernel, ...: run as itself, through jupyter_client).

Found once per server (`discover`), by name. A Python kernelspec (what `python -m ipykernel
install --name X` writes) is run with its interpreter and kernelserver's worker, not ipykernel:
interrupts, limits and output work as in the server's own environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT = "python3"  # the server's own interpreter, as Jupyter names its default kernel
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
CONDA_LIST_TIMEOUT = 10.0  # seconds `conda env list` may take before conda is left out
PROBE_TIMEOUT = 10.0  # seconds an interpreter may take to say its version


@dataclass(frozen=True)
class KernelSpec:
    """One environment a namespace can run in."""

    name: str
    python: str | None  # the interpreter that runs the worker; None: a Jupyter kernel runs as itself
    display_name: str
    source: str  # "server", "setting", "kernelspec", "conda"; "jupyter" for a kernel run as itself
    language: str = "python"
    argv0: str | None = None  # a Jupyter kernel's program (kernel.json's argv[0])

    @property
    def jupyter(self) -> bool:
        """True for a Jupyter kernel of its own, started through jupyter_client."""
        return self.python is None

    def to_dict(self) -> dict[str, Any]:
        """As `kernelserver kernels --json` and /info show it."""
        return {"name": self.name, "display_name": self.display_name, "language": self.language,
                "python": self.python, "source": self.source,
                **({"argv0": self.argv0} if self.jupyter else {})}


def parse_setting(text: str | Iterable[str]) -> dict[str, str]:
    """`name=/path/to/python,...` (or a list of `name=path`) as {name: path}; ValueError if bad."""
    items = text.split(",") if isinstance(text, str) else list(text)
    found: dict[str, str] = {}
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, sep, python = item.partition("=")
        name, python = name.strip(), python.strip()
        if not sep or not python:
            raise ValueError(f"a kernel is NAME=PYTHON (e.g. torch=/opt/conda/envs/torch/bin/python), "
                             f"not {item!r}")
        if not NAME.match(name):
            raise ValueError(f"kernel name {name!r} must match {NAME.pattern}")
        found[name] = python
    return found


def _kernelspec_dirs() -> list[Path]:
    """Where Jupyter looks for kernelspecs (jupyter_core's data path, without importing it)."""
    dirs = [Path(p) for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    data_home = os.environ.get("JUPYTER_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "jupyter")
    dirs += [Path(data_home), Path(sys.prefix) / "share" / "jupyter",
             Path("/usr/local/share/jupyter"), Path("/usr/share/jupyter")]
    return [d / "kernels" for d in dirs]


def _kernelspecs() -> list[KernelSpec]:
    """Every installed kernelspec: one whose language is Python and whose argv[0] is a Python
    interpreter runs our worker there; any other is a Jupyter kernel run as itself."""
    found: dict[str, KernelSpec] = {}
    for where in _kernelspec_dirs():
        try:
            entries = sorted(where.iterdir())
        except OSError:
            continue
        for entry in entries:
            name = entry.name.lower()
            if name in found or not NAME.match(name):
                continue  # the first directory that has a name wins, as in Jupyter
            try:
                spec = json.loads((entry / "kernel.json").read_text())
            except (OSError, ValueError):
                continue
            argv, language = spec.get("argv") or [], str(spec.get("language") or "")
            if not argv or not isinstance(argv, list):
                continue
            display, program = str(spec.get("display_name") or name), str(argv[0])
            if language.lower() == "python" and re.match(r"^python[0-9.]*$",
                                                         os.path.basename(program)):
                found[name] = KernelSpec(name, program, display, "kernelspec")
            else:  # another language, or a wrapper script: not ours to run the worker with
                found[name] = KernelSpec(name, None, display, "jupyter", language or "unknown",
                                         program)
    return list(found.values())


def _conda_envs() -> list[KernelSpec]:
    """Every conda (or mamba) environment, as conda-<name>; none where conda is absent."""
    prefixes: list[str] = []
    conda = os.environ.get("CONDA_EXE") or shutil.which("conda") or shutil.which("mamba")
    if conda:
        try:
            listed = subprocess.run([conda, "env", "list", "--json"], capture_output=True,
                                    text=True, timeout=CONDA_LIST_TIMEOUT, check=True)
            prefixes = [str(p) for p in json.loads(listed.stdout).get("envs", [])]
        except (OSError, subprocess.SubprocessError, ValueError):
            prefixes = []
    for root in (os.environ.get("CONDA_PREFIX"), os.environ.get("MAMBA_ROOT_PREFIX")):
        if root:
            base = Path(root)
            base = base.parent.parent if base.parent.name == "envs" else base
            prefixes.append(str(base))
            prefixes += [str(p) for p in sorted((base / "envs").glob("*"))]
    found: dict[str, KernelSpec] = {}
    for prefix in prefixes:
        python = Path(prefix) / "bin" / "python"
        if not python.exists():
            continue
        name = "conda-" + (Path(prefix).name if Path(prefix).parent.name == "envs" else "base")
        if NAME.match(name) and name not in found:
            found[name] = KernelSpec(name, str(python), f"Python (conda: {name[6:]})", "conda")
    return list(found.values())


def discover(configured: dict[str, str]) -> dict[str, KernelSpec]:
    """Every environment by name: the server's own first, then the setting's (which win over a
    kernelspec or conda environment of the same name), kernelspecs, conda environments."""
    found = {DEFAULT: KernelSpec(DEFAULT, sys.executable,
                                 f"Python {sys.version_info[0]}.{sys.version_info[1]} (kernelserver)",
                                 "server")}
    for name, python in configured.items():
        found[name] = KernelSpec(name, python, f"{name} ({python})", "setting")
    for spec in _kernelspecs() + _conda_envs():
        found.setdefault(spec.name, spec)
    return found


def jupyter_missing(spec: KernelSpec) -> str | None:
    """Why a Jupyter kernel cannot start here (its program, or jupyter_client, is missing)."""
    if importlib.util.find_spec("jupyter_client") is None:
        return ("a Jupyter kernel runs through jupyter_client: `pip install 'kernelserver[jupyter]'`")
    program = spec.argv0 or ""
    if not (shutil.which(program) or (os.path.isabs(program) and os.access(program, os.X_OK))):
        return f"its program {program!r} is not found"
    return None


def version_of(python: str) -> tuple[int, int, int] | str:
    """The interpreter's version, or why it could not be asked (one line)."""
    try:
        done = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:3])"],
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run {python}: {exc}"
    if done.returncode != 0:
        return f"{python} exited with {done.returncode}: {done.stderr.strip()[-200:]}"
    try:
        major, minor, micro = (int(part) for part in done.stdout.split())
    except ValueError:
        return f"{python} did not say its version: {done.stdout.strip()[:200]!r}"
    return major, minor, micro


def status_rows(specs: list[KernelSpec], oldest: tuple[int, int]) -> list[dict[str, Any]]:
    """Each environment as `kernelserver kernels` shows it: its Python's version and whether it
    starts, or why not (every interpreter asked at once, in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = list(pool.map(lambda spec: version_of(spec.python) if spec.python
                                 else jupyter_missing(spec), specs))
    found = []
    for spec, version in zip(specs, versions, strict=True):
        row = spec.to_dict()
        if spec.jupyter:  # its program is there (starting R or Julia to see takes seconds)
            row.update(version=None, starts=version is None, why=version)
        elif isinstance(version, str) or version is None:
            row.update(version=None, starts=False, why=version)
        else:
            too_old = version[:2] < oldest
            row.update(version=".".join(map(str, version)), starts=not too_old,
                       why=f"Python {version[0]}.{version[1]} is older than {oldest[0]}.{oldest[1]}, "
                           "the oldest the worker runs on" if too_old else None)
        found.append(row)
    return found


def jupyter_facts(details: dict[str, Any]) -> dict[str, Any]:
    """What a Jupyter kernel said of itself (its kernel_info, in its kernel's details) for /info."""
    language = details.get("language_info") or {}
    return {"language": language.get("name"), "version": language.get("version"),
            "implementation": details.get("implementation"),
            "implementation_version": details.get("implementation_version")}

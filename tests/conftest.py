"""Fixtures: a fresh app per test (both backends), and a real `kernelserver serve` subprocess.

Plain helpers (TOKEN, ApiClient, start_server, wait_until...) are in helpers.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from kernelserver import __version__, create_app
from kernelserver.config import load_config
from kernelserver.service import Service

from helpers import TOKEN, ApiClient, LiveServer, start_server

_KERNELSPECS: list[str] = []  # the directory this run registered kernelspecs in


def pytest_configure(config: pytest.Config) -> None:
    """bash_kernel (the test extra) installs no kernelspec: register one for this run where
    Jupyter finds none, so every server the tests start (they inherit JUPYTER_PATH) offers it."""
    if importlib.util.find_spec("bash_kernel") is None or importlib.util.find_spec("jupyter_client") is None:
        return  # a run without the test extra (.ci/run's C writer checks on other Pythons)
    from jupyter_client.kernelspec import KernelSpecManager

    if "bash" in KernelSpecManager().find_kernel_specs():
        return
    where = tempfile.mkdtemp(prefix="kernelserver-test-kernels-")
    _KERNELSPECS.append(where)
    spec = Path(where) / "kernels" / "bash"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "bash_kernel", "-f", "{connection_file}"],
        "display_name": "Bash", "language": "bash", "env": {"PS1": "$"}}))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (where, os.environ.get("JUPYTER_PATH")) if p)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With `-n`, each file runs whole on one worker (xdist's `loadfile`) unless --dist says
    otherwise: a module's fixtures start one server or one Ray cluster, not one per worker."""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadFileScheduling

    return LoadFileScheduling(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    for where in _KERNELSPECS:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Build apps with a private data dir; every app is closed (workers stopped) at teardown."""
    apps: list[Flask] = []

    def build(**config: Any) -> Flask:
        config.setdefault("token", TOKEN)
        config.setdefault("data_dir", str(tmp_path / f"data{len(apps)}"))
        app = create_app(config)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["kernelserver"].close()


@pytest.fixture(params=["process", "inprocess"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn."""
    return str(request.param)


@pytest.fixture
def app(make_app: Callable[..., Flask], backend: str) -> Flask:
    """An app on the backend under test."""
    return make_app(backend=backend)


@pytest.fixture
def process_app(make_app: Callable[..., Flask]) -> Flask:
    """An app on the process backend."""
    return make_app(backend="process")


@pytest.fixture
def api(app: Flask) -> ApiClient:
    """A token-carrying test client for the app on the backend under test."""
    return ApiClient(app.test_client())


@pytest.fixture
def papi(process_app: Flask) -> ApiClient:
    """A token-carrying test client on the process backend."""
    return ApiClient(process_app.test_client())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
           ) -> Iterator[LiveServer]:
    """A real server with default settings, shared by a test module (a module may define its
    own `server` with other settings)."""
    live = start_server(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    yield live
    live.stop()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A real server on 127.0.0.1 (process backend), stopped at teardown."""
    server = start_server(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Build services (the core, no Flask) with a private data dir; all closed at teardown."""
    services: list[Service] = []

    def build(**settings: Any) -> Service:
        settings.setdefault("token", TOKEN)
        settings.setdefault("data_dir", str(tmp_path / f"data{len(services)}"))
        service = Service(load_config(settings, environ={}), __version__)
        services.append(service)
        return service

    yield build
    for service in services:
        service.close()


@pytest.fixture
def service(make_service: Callable[..., Service], backend: str) -> Service:
    """A service on the backend under test."""
    return make_service(backend=backend)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a real server (a fixture that starts one) is slow: the fast lane
    (`-m 'not slow'`) runs the Flask-level tests only."""
    for item in items:
        if {"server", "live_server", "printing_server", "small"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

"""The environment probe, /info, and `kernelserver check` against a real server."""

from __future__ import annotations

import json
import os
import stat
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kernelserver import __version__
from kernelserver.cli import cli
from kernelserver.runner import probe

from helpers import ApiClient, LiveServer, free_port

PROBE_KEYS = {"python", "platform", "cpu_count", "memory_total", "packages", "gpus", "gpu_count"}


def test_info_reports_version_backend_limits_and_probe(papi: ApiClient) -> None:
    data = papi.get("/info").get_json()
    assert data["version"] == __version__ and data["backend"] == "process"
    assert data["limits"] == {"max_body_bytes": 16 * 1024 * 1024, "max_namespaces": 32,
                              "max_queued": 64, "output_cap_bytes": 8 * 1024 * 1024,
                              "repr_limit_bytes": 1024 * 1024, "interrupt_grace": 2.0,
                              "request_read_timeout": 15.0, "memory_limit": 0,
                              "cull_idle_after": 0.0,
                              "memory_limit_method": data["limits"]["memory_limit_method"]}
    assert data["limits"]["memory_limit_method"] in ("cgroup v2", "cgroup v1", "watchdog")
    found = data["probe"]
    assert set(found) == PROBE_KEYS
    assert found["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert found["python"]["executable"]
    assert found["cpu_count"] == os.cpu_count()
    assert found["memory_total"] > 0
    assert "Flask" in found["packages"] or "flask" in found["packages"]
    assert set(found["gpus"]) == {"torch", "jax", "nvidia_smi"}
    # Run in a worker, not in the server: a namespace count does not move, the probe is cached.
    assert data["namespaces"] == 0
    assert papi.get("/info").get_json()["probe"] == found


def _fake_torch(devices: list[tuple[str, int]]) -> types.ModuleType:
    torch = types.ModuleType("torch")
    torch.__version__ = "9.9.9"  # type: ignore[attr-defined]
    torch.version = types.SimpleNamespace(cuda="12.4")  # type: ignore[attr-defined]
    torch.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        is_available=lambda: bool(devices),
        device_count=lambda: len(devices),
        get_device_properties=lambda i: types.SimpleNamespace(name=devices[i][0],
                                                              total_memory=devices[i][1]),
    )
    return torch


@pytest.fixture
def no_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))


def test_probe_reports_gpus_through_torch(monkeypatch: pytest.MonkeyPatch, no_nvidia_smi: None) -> None:
    # No GPU on this machine: a stand-in torch module is the one thing mocked.
    monkeypatch.setitem(sys.modules, "torch", _fake_torch([("NVIDIA H100", 80 * 2**30)]))
    found = probe.collect()
    assert found["gpus"]["torch"]["devices"] == [
        {"index": 0, "name": "NVIDIA H100", "memory_total": 80 * 2**30}]
    assert found["gpu_count"] == 1


def test_probe_survives_a_broken_torch(monkeypatch: pytest.MonkeyPatch, no_nvidia_smi: None) -> None:
    broken = _fake_torch([])
    broken.cuda.is_available = lambda: (_ for _ in ()).throw(RuntimeError("driver too old"))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", broken)
    found = probe.collect()
    assert "driver too old" in found["gpus"]["torch"]["error"]
    assert found["gpu_count"] == 0


def test_probe_reads_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '0, NVIDIA A100-SXM4-40GB, 40960, 550.54'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    found = probe.collect()
    assert found["gpus"]["nvidia_smi"] == {"present": True, "devices": [
        {"index": 0, "name": "NVIDIA A100-SXM4-40GB", "memory_total": 40960 * 2**20,
         "driver": "550.54"}]}
    assert found["gpu_count"] == 1


def test_probe_without_any_gpu_source(no_nvidia_smi: None) -> None:
    found = probe.collect()
    assert found["gpus"]["nvidia_smi"] == {"present": False, "devices": []}
    assert found["gpu_count"] == (1 if found["gpus"]["torch"].get("available") else 0)


def run_check(server: LiveServer, *args: str, token: str | None = None) -> Any:
    return CliRunner().invoke(cli, ["check", "--url", server.url, "--token", token or server.token,
                                    *args])


@pytest.mark.slow
def test_check_passes_on_a_healthy_server(server: LiveServer) -> None:
    result = run_check(server, "--require", "flask", "--require", "requests>=2",
                       "--code", "import flask\nflask.__name__")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("server") and "ok" in lines[0]
    assert any(line.startswith("flask ") and " ok " in line for line in lines)
    assert any(line.startswith("code") and "'flask'" in line for line in lines)
    assert lines[-1] == "all checks passed"


@pytest.mark.slow
@pytest.mark.parametrize(("args", "row", "why"), [
    (["--require", "surely-not-installed-pkg"], "surely-not-installed-pkg", "not installed"),
    (["--require", "requests>=999"], "requests>=999", "does not satisfy >=999"),
    (["--gpu"], "gpu", "no GPU seen by torch, jax or nvidia-smi"),
    (["--code", "import missing_module_xyz"], "code",
     "ModuleNotFoundError: No module named 'missing_module_xyz'"),
], ids=["missing-package", "version-spec", "no-gpu", "code-raises"])
def test_check_fails_clearly(server: LiveServer, args: list[str], row: str, why: str) -> None:
    result = run_check(server, *args)
    assert result.exit_code == 1
    failing = [line for line in result.stdout.splitlines() if "FAIL" in line]
    assert len(failing) == 1
    assert failing[0].startswith(row) and why in failing[0]
    assert result.stdout.splitlines()[-1] == "1 check(s) failed"


@pytest.mark.slow
def test_check_json_report(server: LiveServer) -> None:
    result = run_check(server, "--require", "flask", "--require", "nope-nope", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [(c["check"], c["ok"]) for c in report["checks"]] == [
        ("server", True), ("python", True), ("flask", True), ("nope-nope", False)]
    assert "packages" in report["probe"]


@pytest.mark.slow
def test_check_wrong_token_is_one_line(server: LiveServer) -> None:
    result = run_check(server, token="wrong")
    assert result.exit_code == 2
    # One line that says where the right token comes from (test_client_errors.py checks what).
    assert result.stderr.startswith("kernelserver: error: wrong token for ")
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_check_unreachable_url_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["check", "--url", url, "--token", "t"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"kernelserver: error: cannot reach kernelserver at {url}")
    assert result.stderr.count("\n") == 1


def test_check_timeout_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env = {"KERNELSERVER_CLIENT_TIMEOUT": "1"}
        result = CliRunner(env=env).invoke(cli, ["check", "--url", url, "--token", "t"])
    assert result.exit_code == 2
    assert result.stderr.startswith("kernelserver: error: no answer from")

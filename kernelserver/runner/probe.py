"""The environment probe: Python, platform, packages and GPUs, as seen from inside a namespace."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

PROBE_CODE = "from kernelserver.runner.probe import print_probe\nprint_probe()"
MARK = "KERNELSERVER-PROBE:"


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def distributions() -> dict[str, str]:
    """Installed distributions, name → version."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name and name not in found:
            found[name] = dist.version
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def _torch_gpus() -> dict[str, Any]:
    if "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        return {"available": False, "installed": False}
    try:
        import torch

        info: dict[str, Any] = {"installed": True, "version": torch.__version__,
                                "cuda": getattr(torch.version, "cuda", None),
                                "available": bool(torch.cuda.is_available()), "devices": []}
        if info["available"]:
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                info["devices"].append({"index": index, "name": props.name,
                                        "memory_total": int(props.total_memory)})
        return info
    except Exception as exc:  # a broken CUDA install must not break the probe
        return {"installed": True, "available": False, "error": f"{type(exc).__name__}: {exc}"}


def _jax_gpus() -> dict[str, Any]:
    if importlib.util.find_spec("jax") is None:
        return {"installed": False, "available": False}
    try:
        import jax

        devices = [{"index": d.id, "name": getattr(d, "device_kind", str(d)), "platform": d.platform}
                   for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm")]
        return {"installed": True, "version": jax.__version__, "available": bool(devices),
                "devices": devices}
    except Exception as exc:
        return {"installed": True, "available": False, "error": f"{type(exc).__name__}: {exc}"}


def _nvidia_smi() -> dict[str, Any]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"present": False, "devices": []}
    try:
        done = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total,driver_version",
             "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"present": True, "devices": [], "error": str(exc)}
    if done.returncode != 0:
        return {"present": True, "devices": [], "error": done.stderr.strip()[:500]}
    devices = []
    for line in done.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            devices.append({"index": int(parts[0]), "name": parts[1],
                            "memory_total": int(float(parts[2])) * 1024 * 1024,
                            "driver": parts[3]})
    return {"present": True, "devices": devices}


def collect() -> dict[str, Any]:
    """Everything the probe reports; each GPU source is optional and never fails the probe."""
    gpus = {"torch": _torch_gpus(), "jax": _jax_gpus(), "nvidia_smi": _nvidia_smi()}
    count = max(len(gpus["torch"].get("devices", [])), len(gpus["jax"].get("devices", [])),
                len(gpus["nvidia_smi"].get("devices", [])))
    return {
        "python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": {"system": platform.system(), "release": platform.release(),
                     "machine": platform.machine(), "platform": platform.platform()},
        "cpu_count": os.cpu_count(),
        "memory_total": _memory_bytes(),
        "packages": distributions(),
        "gpus": gpus,
        "gpu_count": count,
    }


def print_probe() -> None:
    """Print the probe as one marked JSON line (how a worker hands it to the server)."""
    print(MARK + json.dumps(collect()), flush=True)


def parse_probe_output(stdout: str) -> dict[str, Any] | None:
    """The probe from a worker's stdout, or None."""
    for line in stdout.splitlines():
        if line.startswith(MARK):
            data: dict[str, Any] = json.loads(line[len(MARK):])
            return data
    return None

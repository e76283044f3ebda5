"""A Jupyter kernel of another language (bash_kernel; IRkernel where R is installed) as a namespace:
its start and a trivial cell through kernelserver (HTTP /execute, the Jupyter WebSocket, and the
Kernel adapter alone, in this process) beside jupyter_client driving the same kernel directly."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from channels import Channels, start_kernel
from common import TOKEN, Http, interleave, jupyter_execute, kernelserver, median_ms, percentile_ms, timed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernelserver.backends.jupyterkernel import JupyterClientKernel, LenientKernelSpec  # noqa: E402
from kernelserver.results import Cell  # noqa: E402

CODE = {"ir": "1+1", "bash": "echo 2"}  # a trivial cell in each kernel's language; quicker start first


class _Sink:
    """Takes a cell's output and drops it (what the adapter costs, without an Execution's)."""

    def write_stdout(self, text: str) -> None: ...
    def write_stderr(self, text: str) -> None: ...
    def add_display(self, bundle: dict[str, Any], display_id: str | None = None,
                    update: bool = False) -> None: ...
    def clear_output(self, wait: bool = False) -> None: ...
    def publish_value(self, bundle: dict[str, Any]) -> None: ...
    def request_input(self, prompt: str, password: bool, reply: Callable[[str], None]) -> None: ...


@contextmanager
def direct(name: str) -> Iterator[Any]:
    """The kernel started by jupyter_client itself, with a blocking client ready."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    # start_new_kernel as jupyter_client writes it, with a spec manager that reads bash_kernel's.
    manager = KernelManager(kernel_name=name,
                            kernel_spec_manager=KernelSpecManager(kernel_spec_class=LenientKernelSpec))
    # Killed at the end (now=True), the kernel cannot clean up: R's Rtmp dir goes with this one.
    with tempfile.TemporaryDirectory(prefix="bench-kernel-") as scratch:
        manager.start_kernel(env={**os.environ, "TMPDIR": scratch})
        client = manager.client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            yield client
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=True)


def one_kernel(name: str, rounds: int, batch: int, starts: int) -> dict[str, Any]:
    """Start and round trip of one kernel: jupyter_client's, then kernelserver's three ways."""
    code = CODE[name]
    with kernelserver() as ks, direct(name) as client:
        base, http = f"http://127.0.0.1:{ks.port}", Http(ks.port)
        http.post_json("/env/create", {"id": "bench", "kernel": name})
        ws = Channels(base, start_kernel_named(base, name), TOKEN)
        adapter, counts = JupyterClientKernel(name), iter(range(1, 1 << 30))

        def over_http() -> None:
            status, data = http.post("/execute", {"id": "bench", "code": code})
            assert status == 200 and b'"status":"ok"' in data, data

        def in_adapter() -> None:
            assert adapter.execute(Cell(code), next(counts), _Sink()).status == "ok"

        measures = {"jupyter_client": lambda: timed(lambda: jupyter_execute(client, code), batch),
                    "kernelserver_http": lambda: timed(over_http, batch),
                    "kernelserver_ws": lambda: timed(lambda: ws.execute(code), batch),
                    "adapter_in_process": lambda: timed(in_adapter, batch)}
        samples = {key: [s for one in batches for s in one]
                   for key, batches in interleave(rounds, measures).items()}
        counter = iter(range(1 << 30))

        def ks_start() -> float:
            ns, started = f"start-{next(counter)}", time.perf_counter()
            http.post_json("/env/create", {"id": ns, "kernel": name})
            assert http.post_json("/execute", {"id": ns, "code": code})["status"] == "ok"
            elapsed = time.perf_counter() - started
            http.post_json("/env/delete", {"id": ns})
            return elapsed

        def jc_start() -> float:
            started = time.perf_counter()
            with direct(name) as fresh:
                jupyter_execute(fresh, code)
                return time.perf_counter() - started

        start_samples = interleave(starts, {"jupyter_client": jc_start, "kernelserver": ks_start})
        adapter.close()
        ws.close()
        http.close()
    medians = {key: median_ms(s) for key, s in samples.items()}
    return {"code": code, "requests_each": rounds * batch, "median_ms": medians,
            "p90_ms": {key: percentile_ms(s, 0.9) for key, s in samples.items()},
            "added_ms": {key: medians[key] - medians["jupyter_client"] for key in medians
                         if key != "jupyter_client"},
            "start_median_ms": {key: median_ms(s) for key, s in start_samples.items()}}


def start_kernel_named(base: str, name: str) -> str:
    """POST /api/kernels of that kernelspec; the new kernel's id."""
    import requests

    if name == "python3":
        return start_kernel(base, TOKEN)
    response = requests.post(base + "/api/kernels", json={"name": name},
                             headers={"Authorization": f"token {TOKEN}"}, timeout=120)
    response.raise_for_status()
    kernel_id: str = response.json()["id"]
    return kernel_id


def run(rounds: int = 5, batch: int = 20, starts: int = 5, only: str | None = None,
        most: int | None = None) -> dict[str, Any]:
    """Each installed kernel of CODE (or only that one, or the first `most`): bash always (the test
    extra), R where it is installed."""
    from jupyter_client.kernelspec import KernelSpecManager

    installed = KernelSpecManager(kernel_spec_class=LenientKernelSpec).find_kernel_specs()
    found = [name for name in CODE if name in installed and (name != "ir" or shutil.which("R"))
             and only in (None, name)]
    return {name: one_kernel(name, rounds, batch, starts) for name in found[:most]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--kernel", choices=sorted(CODE), help="only this kernel")
    args = parser.parse_args()
    print(json.dumps(run(args.rounds, args.batch, args.starts, args.kernel), indent=1))

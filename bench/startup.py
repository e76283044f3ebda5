"""Namespace create-to-first-result, against a Jupyter kernel start (start + ready + first `1+1`);
and in another Python environment (a virtualenv made here, issue 25) against the server's own."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import Http, jupyter_execute, jupyter_kernel, kernelserver, median_ms


def start_once(http: Http, ns: str, kernel: str | None = None) -> float:
    """Seconds from /env/create of ns (in that kernel) to its first `1+1` result; ns is deleted after."""
    started = time.perf_counter()
    http.post_json("/env/create", {"id": ns} if kernel is None else {"id": ns, "kernel": kernel})
    answer = http.post_json("/execute", {"id": ns, "code": "1+1"})
    elapsed = time.perf_counter() - started
    assert answer["result"] == {"text/plain": "2"}, answer
    http.post_json("/env/delete", {"id": ns})
    return elapsed


def run(rounds: int = 10) -> dict[str, Any]:
    """Interleaved: one namespace start, one in the other environment, one Jupyter kernel start,
    per round."""
    with tempfile.TemporaryDirectory(prefix="ks-bench-env-") as tmp, \
            kernelserver(env={"KERNELSERVER_KERNELS": f"other={_venv(tmp)}"}) as ks:
        http = Http(ks.port)
        counter = iter(range(1_000_000))

        def namespace_start() -> float:
            return start_once(http, f"start-{next(counter)}")

        def jupyter_start() -> float:
            started = time.perf_counter()
            with jupyter_kernel() as client:
                jupyter_execute(client, "1+1")
                return time.perf_counter() - started

        def other_env_start() -> float:
            return start_once(http, f"other-{next(counter)}", kernel="other")

        namespace_start()  # the fork server's first fork warms its page cache; so does Jupyter's
        first_other = other_env_start()  # starts that environment's fork server: once per server
        samples: dict[str, list[float]] = {"kernelserver": [], "other_env": [], "jupyter": []}
        for _ in range(rounds):
            samples["kernelserver"].append(namespace_start())
            samples["other_env"].append(other_env_start())
            samples["jupyter"].append(jupyter_start())
        http.close()
    medians = {name: median_ms(s) for name, s in samples.items()}
    return {"rounds": rounds, "median_ms": medians, "first_in_other_env_ms": first_other * 1000,
            "fraction_of_jupyter": medians["kernelserver"] / medians["jupyter"],
            "other_env_vs_own": medians["other_env"] / medians["kernelserver"]}


def _venv(where: str) -> str:
    """A bare virtualenv (no pip) of this Python's base interpreter; its python."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", f"{where}/venv"], check=True, timeout=120)
    return f"{where}/venv/bin/python"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    print(json.dumps(run(parser.parse_args().rounds), indent=1))

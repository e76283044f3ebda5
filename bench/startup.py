"""Namespace create-to-first-result, against a Jupyter kernel start (start + ready + first `1+1`)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from common import Http, jupyter_execute, jupyter_kernel, kernelserver, median_ms


def start_once(http: Http, ns: str) -> float:
    """Seconds from /env/create of ns to its first `1+1` result; ns is deleted after."""
    started = time.perf_counter()
    http.post_json("/env/create", {"id": ns})
    answer = http.post_json("/execute", {"id": ns, "code": "1+1"})
    elapsed = time.perf_counter() - started
    assert answer["result"] == {"text/plain": "2"}, answer
    http.post_json("/env/delete", {"id": ns})
    return elapsed


def run(rounds: int = 10) -> dict[str, Any]:
    """Interleaved: one namespace start, one Jupyter kernel start, per round."""
    with kernelserver() as ks:
        http = Http(ks.port)
        counter = iter(range(1_000_000))

        def namespace_start() -> float:
            return start_once(http, f"start-{next(counter)}")

        def jupyter_start() -> float:
            started = time.perf_counter()
            with jupyter_kernel() as client:
                jupyter_execute(client, "1+1")
                return time.perf_counter() - started

        namespace_start()  # the fork server's first fork warms its page cache; so does Jupyter's
        samples: dict[str, list[float]] = {"kernelserver": [], "jupyter": []}
        for _ in range(rounds):
            samples["kernelserver"].append(namespace_start())
            samples["jupyter"].append(jupyter_start())
        http.close()
    medians = {name: median_ms(s) for name, s in samples.items()}
    return {"rounds": rounds, "median_ms": medians,
            "fraction_of_jupyter": medians["kernelserver"] / medians["jupyter"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    print(json.dumps(run(parser.parse_args().rounds), indent=1))

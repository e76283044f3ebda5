"""Execute round trip of `1+1`: kernelserver vs the floor route vs jupyter_client on ipykernel."""

from __future__ import annotations

import argparse
import json
from typing import Any

from common import (
    Http,
    floor_server,
    interleave,
    jupyter_execute,
    jupyter_kernel,
    kernelserver,
    median_ms,
    percentile_ms,
    timed,
)


def run(rounds: int = 10, batch: int = 200) -> dict[str, Any]:
    """Latencies of each system, interleaved batch by batch; medians and ratios."""
    with kernelserver() as ks, floor_server() as floor, jupyter_kernel() as jupyter:
        ks_http, floor_http = Http(ks.port), Http(floor.port)
        ks_http.post_json("/env/create", {"id": "bench"})
        samples: dict[str, list[float]] = {}

        def ks_call() -> None:
            status, data = ks_http.post("/execute", {"id": "bench", "code": "1+1"})
            assert status == 200 and b'"text/plain":"2"' in data, data

        def floor_call() -> None:
            status, _ = floor_http.post("/floor", {"id": "bench", "code": "1+1"})
            assert status == 200

        measures = {"kernelserver": lambda: timed(ks_call, batch), "floor": lambda: timed(floor_call, batch),
                    "jupyter_client": lambda: timed(lambda: jupyter_execute(jupyter, "1+1"), batch)}
        for name, batches in interleave(rounds, measures).items():
            samples[name] = [sample for one_batch in batches for sample in one_batch]
        ks_http.close()
        floor_http.close()
    medians = {name: median_ms(s) for name, s in samples.items()}
    return {
        "requests_each": rounds * batch,
        "median_ms": medians,
        "p90_ms": {name: percentile_ms(s, 0.9) for name, s in samples.items()},
        "vs_floor": medians["kernelserver"] / medians["floor"],
        "faster_than_jupyter": medians["jupyter_client"] / medians["kernelserver"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(run(args.rounds, args.batch), indent=1))

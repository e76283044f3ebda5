"""The ray backend against the process backend, side by side: namespace start and the `1+1` round trip.

    python bench/ray_backend.py            # needs `pip install 'kernelserver[ray]'`

Starts a one-node Ray cluster on loopback (Ray's own test cluster; every process on 127.0.0.1) and
two servers, one per backend, and measures in interleaved rounds: /env/create to the first `1+1`
result, and the `1+1` round trip (median of a batch per round).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from common import Http, interleave, kernelserver, machine, median_ms
from startup import start_once

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def run(rounds: int = 10, batch: int = 200) -> dict[str, Any]:
    """Medians of both backends, interleaved round by round."""
    os.environ.update(LOOPBACK)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    try:
        ray_env = {**LOOPBACK, "KERNELSERVER_BACKEND": "ray", "KERNELSERVER_RAY_ADDRESS": cluster.address}
        with kernelserver() as local, kernelserver(ray_env) as on_ray:
            counter = iter(range(1_000_000))
            measures = {}
            for tag, server in (("process", local), ("ray", on_ray)):
                http = Http(server.port)
                http.post_json("/env/create", {"id": "rt"})

                def start(http: Http = http) -> float:
                    return start_once(http, f"start-{next(counter)}")

                def roundtrip(http: Http = http) -> float:
                    times = []
                    for _ in range(batch):
                        began = time.perf_counter()
                        http.post_json("/execute", {"id": "rt", "code": "1+1"})
                        times.append(time.perf_counter() - began)
                    return sorted(times)[len(times) // 2]

                measures[f"{tag} start"] = start
                measures[f"{tag} roundtrip"] = roundtrip
            for measure in measures.values():  # warm: first fork, first actor
                measure()
            samples = interleave(rounds, measures)
    finally:
        cluster.shutdown()
    figures = {tag: {"start_ms": median_ms(samples[f"{tag} start"]),
                     "roundtrip_ms": median_ms(samples[f"{tag} roundtrip"])} for tag in ("process", "ray")}
    return {"rounds": rounds, "batch": batch, "machine": machine(), **figures,
            "ray_over_process": {k: figures["ray"][k] / figures["process"][k] for k in figures["ray"]}}


def table(result: dict[str, Any]) -> str:
    """Markdown: each measure on both backends and the ratio."""
    lines = ["| measure | process backend | ray backend (1 local node) | ray / process |",
             "|---|---|---|---|"]
    for name, key in (("namespace ready (create → first result)", "start_ms"),
                      ("execute `1+1` p50", "roundtrip_ms")):
        lines.append(f"| {name} | {result['process'][key]:.1f} ms | {result['ray'][key]:.1f} ms | "
                     f"{result['ray_over_process'][key]:.1f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print the raw figures instead")
    args = parser.parse_args()
    found = run(args.rounds, args.batch)
    print(json.dumps(found, indent=1) if args.json else f"{found['machine']}\n\n{table(found)}")

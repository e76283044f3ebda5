"""Throughput with 4 concurrent clients on distinct namespaces, against the floor route."""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from common import Http, floor_server, kernelserver

CLIENTS = 4


def _throughput(make_call: Callable[[int], Callable[[], None]], seconds: float) -> float:
    """Requests per second of CLIENTS threads, each calling its own call for `seconds`."""
    calls = [make_call(i) for i in range(CLIENTS)]
    counts = [0] * CLIENTS
    barrier = threading.Barrier(CLIENTS + 1)
    stop = threading.Event()

    def loop(i: int) -> None:
        barrier.wait()
        while not stop.is_set():
            calls[i]()
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def run(rounds: int = 5, seconds: float = 2.0) -> dict[str, Any]:
    """Interleaved rounds of kernelserver and floor throughput."""
    with kernelserver() as ks, floor_server() as floor:
        ks_conns = [Http(ks.port) for _ in range(CLIENTS)]
        floor_conns = [Http(floor.port) for _ in range(CLIENTS)]
        for i, conn in enumerate(ks_conns):
            conn.post_json("/env/create", {"id": f"c{i}"})

        def ks_call(i: int) -> Callable[[], None]:
            def call() -> None:
                status, data = ks_conns[i].post("/execute", {"id": f"c{i}", "code": "1+1"})
                assert status == 200 and b'"text/plain":"2"' in data, data
            return call

        def floor_call(i: int) -> Callable[[], None]:
            def call() -> None:
                status, _ = floor_conns[i].post("/floor", {"id": f"c{i}", "code": "1+1"})
                assert status == 200
            return call

        samples: dict[str, list[float]] = {"kernelserver": [], "floor": []}
        for _ in range(rounds):
            samples["kernelserver"].append(_throughput(ks_call, seconds))
            samples["floor"].append(_throughput(floor_call, seconds))
        for conn in ks_conns + floor_conns:
            conn.close()
    best = {name: sorted(s)[len(s) // 2] for name, s in samples.items()}
    return {"clients": CLIENTS, "rounds": rounds, "median_requests_per_s": best,
            "vs_floor": best["kernelserver"] / best["floor"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(json.dumps(run(args.rounds, args.seconds), indent=1))

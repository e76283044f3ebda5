"""A cell printing 50 MB: streamed and buffered through kernelserver, and through Jupyter's iopub."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from common import Http, PeakRSS, jupyter_execute, jupyter_kernel, kernelserver, rss_bytes

LINE = 99  # characters per printed line, plus its newline


def cell(megabytes: float, line: int = LINE) -> str:
    """A cell printing megabytes of lines of `line` characters (plus the newline)."""
    lines = int(megabytes * 1_000_000) // (line + 1)
    return f"line = 'x' * {line}\nfor _ in range({lines}):\n    print(line)\n"


def stream_once(http: Http, ns: str, code: str, size: int) -> float:
    """Seconds to run code with `stream: true` and read its NDJSON to the end."""
    received = 0

    def count(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)

    started = time.perf_counter()
    http.stream("/execute", {"id": ns, "code": code, "stream": True}, count)
    elapsed = time.perf_counter() - started
    assert received >= size, (received, size)  # every line arrived (plus JSON framing)
    return elapsed


def run(megabytes: float = 50.0, rounds: int = 3) -> dict[str, Any]:
    """MB/s of each way, interleaved round by round, and the server's peak memory when buffered."""
    code = cell(megabytes)
    size = int(megabytes * 1_000_000) // (LINE + 1) * (LINE + 1)
    with kernelserver() as ks, jupyter_kernel() as jupyter:
        http = Http(ks.port)
        http.post_json("/env/create", {"id": "out"})
        cap = int(http.get_json("/info")["limits"]["output_cap_bytes"])
        pid = ks.app_pid()
        http.post_json("/execute", {"id": "out", "code": "1"})

        def streamed() -> float:
            return stream_once(http, "out", code, size)

        peaks: list[int] = []
        exact: list[bool] = []

        def buffered() -> float:
            baseline = rss_bytes(pid)
            with PeakRSS(pid) as peak:
                started = time.perf_counter()
                answer = http.post_json("/execute", {"id": "out", "code": code})
                elapsed = time.perf_counter() - started
            assert answer["status"] == "ok" and (answer["truncated"] or len(answer["stdout"]) == size)
            peaks.append(peak.peak - baseline)
            exact.append(peak.exact)
            return elapsed

        def through_jupyter() -> float:
            received = 0

            def count(text: str) -> None:
                nonlocal received
                received += len(text)

            started = time.perf_counter()
            jupyter_execute(jupyter, code, count)
            elapsed = time.perf_counter() - started
            assert received == size, (received, size)
            return elapsed

        samples: dict[str, list[float]] = {"streamed": [], "buffered": [], "jupyter": []}
        for _ in range(rounds):
            samples["streamed"].append(streamed())
            samples["buffered"].append(buffered())
            samples["jupyter"].append(through_jupyter())
        http.close()
    mb_s = {name: size / 1e6 / min(s) for name, s in samples.items()}
    return {
        "megabytes": size / 1e6, "rounds": rounds, "best_mb_per_s": mb_s,
        "streamed_vs_jupyter": mb_s["streamed"] / mb_s["jupyter"],
        "buffered_peak_mib_above_baseline": max(peaks) / 2**20,
        "output_cap_mib": cap / 2**20,
        "buffered_peak_vs_cap": max(peaks) / cap,
        "peak_is_exact": all(exact),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.megabytes, args.rounds), indent=1))

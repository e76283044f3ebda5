"""Before and after: this checkout against another one, side by side in one run.

    git worktree add /tmp/base main~3       # the code to compare with
    python bench/versus.py --base /tmp/base

Starts one server from each tree (each from its own root, the base on PYTHONPATH too, both with
this virtualenv's packages) and measures, in interleaved rounds: the `1+1` round trip, a
namespace's create to first result, and a printing cell streamed and buffered. For the note of a
change that touches a hot path.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from common import Http, interleave, kernelserver, machine, median_ms
from output import LINE, cell, stream_once
from startup import start_once

HERE = Path(__file__).resolve().parent.parent


def _measures(http: Http, tag: str, batch: int, code: str, size: int) -> dict[str, Any]:
    counter = iter(range(1_000_000))
    http.post_json("/env/create", {"id": "rt"})
    http.post_json("/env/create", {"id": "out"})

    def roundtrip() -> float:
        started = time.perf_counter()
        for _ in range(batch):
            status, data = http.post("/execute", {"id": "rt", "code": "1+1"})
            assert status == 200 and b'"text/plain":"2"' in data, data
        return (time.perf_counter() - started) / batch

    def start() -> float:
        return start_once(http, f"start-{next(counter)}")

    def streamed() -> float:
        return stream_once(http, "out", code, size)

    def buffered() -> float:
        started = time.perf_counter()
        answer = http.post_json("/execute", {"id": "out", "code": code})
        assert answer["status"] == "ok"
        return time.perf_counter() - started

    return {f"{tag} roundtrip": roundtrip, f"{tag} start": start, f"{tag} streamed": streamed,
            f"{tag} buffered": buffered}


def run(base: Path, rounds: int = 5, batch: int = 200, megabytes: float = 20.0,
        line: int = LINE) -> dict[str, Any]:
    """Medians (round trip, start) and best MB/s (output) of both trees, interleaved."""
    code = cell(megabytes, line)
    size = int(megabytes * 1_000_000) // (line + 1) * (line + 1)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(base), os.environ.get("PYTHONPATH")]))}
    with kernelserver(env, cwd=base) as before, kernelserver(cwd=HERE) as after:
        before_http, after_http = Http(before.port), Http(after.port)
        for http, tree in ((before_http, base), (after_http, HERE)):
            where = http.post_json("/execute", {"code": "import kernelserver\nkernelserver.__file__"})
            served_from = Path(json.loads(where["result"]["text/plain"].replace("'", '"'))).parent.parent
            assert served_from == tree, f"the server meant for {tree} runs {served_from}"
        measures = {**_measures(before_http, "before", batch, code, size),
                    **_measures(after_http, "after", batch, code, size)}
        for measure in measures.values():  # warm both: first fork, first big cell
            measure()
        samples = interleave(rounds, measures)
        before_http.close()
        after_http.close()
    figures: dict[str, dict[str, float]] = {}
    for tag in ("before", "after"):
        figures[tag] = {
            "roundtrip_ms": median_ms(samples[f"{tag} roundtrip"]),
            "start_ms": median_ms(samples[f"{tag} start"]),
            "streamed_mb_s": size / 1e6 / min(samples[f"{tag} streamed"]),
            "buffered_mb_s": size / 1e6 / min(samples[f"{tag} buffered"]),
        }
    ratio = {key: figures["after"][key] / figures["before"][key] for key in figures["after"]}
    return {"base": str(base), "rounds": rounds, "batch": batch, "megabytes": size / 1e6, "line": line,
            "machine": machine(), **figures, "after_over_before": ratio}


def table(result: dict[str, Any]) -> str:
    """Markdown: each measure before and after, and after / before."""
    printed = f"{result['megabytes']:.0f} MB in {result['line'] + 1}-byte lines"
    rows = [("execute `1+1` p50", "roundtrip_ms", "{:.2f} ms"), ("create → first result", "start_ms",
            "{:.1f} ms"), (f"{printed}, streamed", "streamed_mb_s", "{:.0f} MB/s"),
            (f"{printed}, buffered", "buffered_mb_s", "{:.0f} MB/s")]
    lines = ["| measure | before | after | after / before |", "|---|---|---|---|"]
    for name, key, fmt in rows:
        lines.append(f"| {name} | {fmt.format(result['before'][key])} | "
                     f"{fmt.format(result['after'][key])} | {result['after_over_before'][key]:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the other checkout's root")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--megabytes", type=float, default=20.0)
    parser.add_argument("--line", type=int, default=LINE, help="characters per printed line")
    parser.add_argument("--json", action="store_true", help="print the raw figures instead")
    args = parser.parse_args()
    if not (args.base / "kernelserver" / "__init__.py").is_file():
        parser.error(f"{args.base} is not a kernelserver checkout")
    found = run(args.base.resolve(), args.rounds, args.batch, args.megabytes, args.line)
    print(json.dumps(found, indent=1) if args.json else f"{found['machine']}\n\n{table(found)}")

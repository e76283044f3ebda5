"""Run every benchmark and print the table of docs/performance.md (or, with --smoke, check they work).

    python bench/run.py            # the full run (about 5 minutes on 2 cores)
    python bench/run.py --smoke    # tiny sizes: proves the scripts still run, measures nothing
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import channels  # noqa: E402
import concurrency  # noqa: E402
import foreign  # noqa: E402
import memory  # noqa: E402
import output  # noqa: E402
import roundtrip  # noqa: E402
import startup  # noqa: E402
from common import machine  # noqa: E402

FULL = {"roundtrip": {"rounds": 10, "batch": 200}, "channels": {"rounds": 10, "batch": 200},
        "startup": {"rounds": 10}, "output": {"megabytes": 50.0, "rounds": 3},
        "concurrency": {"rounds": 5, "seconds": 2.0}, "memory": {"namespaces": 10},
        "foreign": {"rounds": 5, "batch": 20, "starts": 5}}
SMOKE = {"roundtrip": {"rounds": 2, "batch": 10}, "channels": {"rounds": 1, "batch": 5},
         "startup": {"rounds": 1}, "output": {"megabytes": 1.0, "rounds": 1},
         "concurrency": {"rounds": 1, "seconds": 0.3}, "memory": {"namespaces": 1},
         "foreign": {"rounds": 1, "batch": 3, "starts": 1, "most": 1}}


def table(results: dict[str, Any]) -> str:
    """The markdown table: each measure, the figures side by side, the ratio and its target."""
    rt, ch, st, out, cc, mem = (results[k] for k in ("roundtrip", "channels", "startup", "output",
                                                     "concurrency", "memory"))
    ws = ch["median_ms"]
    rows = [
        ("execute `1+1` p50", f"{rt['median_ms']['kernelserver']:.2f} ms",
         f"floor {rt['median_ms']['floor']:.2f} ms", f"{rt['vs_floor']:.2f}× the floor", "≤ 1.3×",
         rt["vs_floor"] <= 1.3),
        ("… against jupyter_client", f"{rt['median_ms']['kernelserver']:.2f} ms",
         f"jupyter_client {rt['median_ms']['jupyter_client']:.2f} ms",
         f"{rt['faster_than_jupyter']:.1f}× faster", "≥ 8×", rt["faster_than_jupyter"] >= 8),
        ("`1+1` over a Jupyter WebSocket p50", f"{ws['kernelserver_ws']:.2f} ms",
         f"jupyter_client {ws['jupyter_client']:.2f} ms; Kernel Gateway's WebSocket "
         f"{ws['kernel_gateway_ws']:.1f} ms", f"{ch['ws_fraction_of_jupyter_client']:.2f} of "
         f"jupyter_client's", "≤ 1/10", ch["ws_fraction_of_jupyter_client"] <= 0.1),
        ("namespace ready (create → first result)", f"{st['median_ms']['kernelserver']:.1f} ms",
         f"Jupyter kernel start {st['median_ms']['jupyter']:.0f} ms",
         f"1/{1 / st['fraction_of_jupyter']:.0f}", "≤ 1/30", st["fraction_of_jupyter"] <= 1 / 30),
        ("… in another Python environment", f"{st['median_ms']['other_env']:.1f} ms",
         f"the server's own {st['median_ms']['kernelserver']:.1f} ms (first, with its fork server: "
         f"{st['first_in_other_env_ms']:.0f} ms)", f"{st['other_env_vs_own']:.2f}×", "≤ 2×",
         st["other_env_vs_own"] <= 2),
        (f"{out['megabytes']:.0f} MB printed, streamed", f"{out['best_mb_per_s']['streamed']:.0f} MB/s",
         f"Jupyter {out['best_mb_per_s']['jupyter']:.1f} MB/s", f"{out['streamed_vs_jupyter']:.1f}×",
         "≥ 8×", out["streamed_vs_jupyter"] >= 8),
        (f"{out['megabytes']:.0f} MB printed, buffered", f"{out['best_mb_per_s']['buffered']:.0f} MB/s",
         f"cap {out['output_cap_mib']:.0f} MiB",
         f"peak +{out['buffered_peak_mib_above_baseline']:.1f} MiB = {out['buffered_peak_vs_cap']:.2f}× cap",
         "≤ 1.5× cap", out["buffered_peak_vs_cap"] <= 1.5),
        ("4 clients, distinct namespaces", f"{cc['median_requests_per_s']['kernelserver']:.0f} req/s",
         f"floor {cc['median_requests_per_s']['floor']:.0f} req/s", f"{cc['vs_floor']:.2f}× the floor",
         "(reported)", True),
        ("idle namespace's memory (PSS), IPython syntax", f"{mem['median_pss_mib']['ipython']:.1f} MiB",
         f"idle ipykernel {mem['median_pss_mib']['ipykernel']:.1f} MiB; plain-Python namespace "
         f"{mem['median_pss_mib']['python']:.1f} MiB",
         f"1/{mem['ipython_namespaces_per_ipykernel']:.1f}", "≤ 8 MiB",
         mem["median_pss_mib"]["ipython"] <= 8),
    ]
    for name, kernel in results["foreign"].items():  # each installed Jupyter kernel of another language
        added, jc = kernel["added_ms"], kernel["median_ms"]["jupyter_client"]
        start = kernel["start_median_ms"]
        rows += [
            (f"`{kernel['code']}` in the {name} Jupyter kernel p50",
             f"WebSocket {kernel['median_ms']['kernelserver_ws']:.2f} ms, HTTP "
             f"{kernel['median_ms']['kernelserver_http']:.2f} ms",
             f"jupyter_client on the same kernel {jc:.2f} ms",
             f"+{added['kernelserver_ws']:.2f} ms (the adapter alone +{added['adapter_in_process']:.2f} ms)",
             "≤ +1 ms", added["kernelserver_ws"] <= 1.0),
            ("… its start (create → first result)", f"{start['kernelserver']:.0f} ms",
             f"jupyter_client {start['jupyter_client']:.0f} ms",
             f"{start['kernelserver'] / start['jupyter_client']:.2f}×", "(reported)", True)]
    lines = ["| measure | kernelserver | compared with | ratio | target | met |", "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {k} | {c} | {r} | {t} | {'yes' if ok else 'no'} |" for m, k, c, r, t, ok in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that every benchmark runs")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    started = time.monotonic()
    results: dict[str, Any] = {}
    for name, module in (("roundtrip", roundtrip), ("channels", channels), ("startup", startup),
                         ("output", output), ("concurrency", concurrency), ("memory", memory),
                         ("foreign", foreign)):
        print(f"running {name} {sizes[name]} ...", file=sys.stderr, flush=True)
        results[name] = module.run(**sizes[name])  # type: ignore[attr-defined]
    results["machine"] = machine()
    results["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{'SMOKE RUN (sizes too small to mean anything): ' if args.smoke else ''}"
          f"{results['machine']}; {results['seconds']} s\n")
    print(table(results))


if __name__ == "__main__":
    main()

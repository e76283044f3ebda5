"""Proportional memory (PSS) of an idle namespace, IPython syntax and plain, against an idle ipykernel.

PSS splits each shared page among the processes that map it: what one more namespace costs the
machine, with the fork server's preloaded pages (Python, IPython, the shell) counted as shared.
Each namespace has run one `1+1`, as a namespace a client has used once.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from common import Http, jupyter_execute, jupyter_kernel, kernelserver


def rollup_kib(pid: int) -> dict[str, int]:
    """The process's /proc/PID/smaps_rollup fields, in KiB."""
    found = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                found[parts[0].rstrip(":")] = int(parts[1])
    return found


def pss_and_private_mib(pid: int) -> tuple[float, float]:
    """PSS, and the pages no other process maps (what the namespace alone costs), in MiB."""
    found = rollup_kib(pid)
    return found["Pss"] / 1024, (found["Private_Clean"] + found["Private_Dirty"]) / 1024


def _kernel_pid(client: Any) -> int:
    """The pid of the ipykernel behind a blocking client (asked with a cell)."""
    msg_id = client.execute("import os; print(os.getpid())", store_history=False)
    while True:
        msg = client.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            pid = int(msg["content"]["text"].strip())
            break
    jupyter_execute(client, "1+1")  # drains the rest of the first cell, and runs a second
    return pid


def run(namespaces: int = 10) -> dict[str, Any]:
    """namespaces of each syntax at once on one server, then one idle ipykernel."""
    found: dict[str, list[tuple[float, float]]] = {"ipython": [], "python": []}
    with kernelserver() as ks:
        http = Http(ks.port)
        pids: dict[str, list[int]] = {"ipython": [], "python": []}
        for i in range(namespaces):
            for syntax in ("ipython", "python"):
                name = f"{syntax}-{i}"
                http.post_json("/env/create", {"id": name, "syntax": syntax})
                assert http.post_json("/execute", {"id": name, "code": "1+1"})["result"] == {
                    "text/plain": "2"}
                pids[syntax].append(int(http.post_json("/env/get", {"id": name})["pid"]))
        for syntax, found_pids in pids.items():
            found[syntax] = [pss_and_private_mib(pid) for pid in found_pids]
        http.close()
    with jupyter_kernel() as client:
        ipykernel = pss_and_private_mib(_kernel_pid(client))
    pss = {syntax: statistics.median(v[0] for v in values) for syntax, values in found.items()}
    private = {syntax: statistics.median(v[1] for v in values) for syntax, values in found.items()}
    return {"namespaces_each": namespaces,
            "median_pss_mib": {**pss, "ipykernel": ipykernel[0]},
            "median_private_mib": {**private, "ipykernel": ipykernel[1]},
            "ipython_namespaces_per_ipykernel": ipykernel[0] / pss["ipython"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespaces", type=int, default=10)
    print(json.dumps(run(parser.parse_args().namespaces), indent=2))


if __name__ == "__main__":
    main()

"""Execute `1+1` over a kept-open Jupyter WebSocket: kernelserver vs its own HTTP /execute, vs
jupyter_client on ipykernel (ZMQ), vs Jupyter Kernel Gateway's WebSocket (the same protocol)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
import websocket
from common import (
    TOKEN,
    Http,
    free_port,
    interleave,
    jupyter_execute,
    jupyter_kernel,
    kernelserver,
    median_ms,
    percentile_ms,
    timed,
)


class Channels:
    """A kept-open channels WebSocket (legacy JSON frames, as a script or jupyter_server sends)."""

    def __init__(self, base: str, kernel_id: str, token: str) -> None:
        self.session = uuid.uuid4().hex
        self.ws = websocket.create_connection(
            base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels?session_id={self.session}",
            header={"Authorization": f"token {token}"}, timeout=120, suppress_origin=True)

    def execute(self, code: str) -> str:
        """Run code; its text/plain result, once the iopub idle of the request has come."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "channel": "shell", "parent_header": {}, "metadata": {}, "buffers": [],
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": self.session,
                       "username": "bench", "version": "5.3", "date": ""},
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False}}))
        result = ""
        while True:
            message = json.loads(self.ws.recv())
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "execute_result":
                result = message["content"]["data"]["text/plain"]
            elif message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                return result

    def close(self) -> None:
        self.ws.close()


def start_kernel(base: str, token: str) -> str:
    """POST /api/kernels; the new kernel's id."""
    response = requests.post(base + "/api/kernels", json={"name": "python3"},
                             headers={"Authorization": f"token {token}"}, timeout=120)
    response.raise_for_status()
    kernel_id: str = response.json()["id"]
    return kernel_id


@contextmanager
def kernel_gateway() -> Iterator[str]:
    """Jupyter Kernel Gateway (jupyter-websocket mode) on a free loopback port; its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kg-bench-") as tmp:
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": tmp, "JUPYTER_DATA_DIR": tmp + "/data"}
        proc = subprocess.Popen([sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
                                 f"--KernelGatewayApp.port={port}", f"--KernelGatewayApp.auth_token={TOKEN}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if requests.get(url + "/api", headers={"Authorization": f"token {TOKEN}"},
                                    timeout=1).ok:
                        break
                except requests.RequestException:
                    time.sleep(0.1)
            else:
                raise RuntimeError("Kernel Gateway did not start")
            yield url
        finally:
            proc.terminate()
            proc.wait(20)


def run(rounds: int = 10, batch: int = 200) -> dict[str, Any]:
    """Round trips of each, interleaved batch by batch; medians, p90s and ratios."""
    with kernelserver() as ks, kernel_gateway() as kg, jupyter_kernel() as jupyter:
        base = f"http://127.0.0.1:{ks.port}"
        ks_ws = Channels(base, start_kernel(base, TOKEN), TOKEN)
        kg_ws = Channels(kg, start_kernel(kg, TOKEN), TOKEN)
        http = Http(ks.port)
        http.post_json("/env/create", {"id": "bench"})

        def ks_http() -> None:
            status, data = http.post("/execute", {"id": "bench", "code": "1+1"})
            assert status == 200 and b'"text/plain":"2"' in data, data

        for channels in (ks_ws, kg_ws):
            assert channels.execute("1+1") == "2"
        measures = {"kernelserver_ws": lambda: timed(lambda: ks_ws.execute("1+1"), batch),
                    "kernelserver_http": lambda: timed(ks_http, batch),
                    "jupyter_client": lambda: timed(lambda: jupyter_execute(jupyter, "1+1"), batch),
                    "kernel_gateway_ws": lambda: timed(lambda: kg_ws.execute("1+1"), batch)}
        samples = {name: [s for one in batches for s in one]
                   for name, batches in interleave(rounds, measures).items()}
        for closing in (ks_ws, kg_ws, http):
            closing.close()
    medians = {name: median_ms(s) for name, s in samples.items()}
    return {
        "requests_each": rounds * batch,
        "median_ms": medians,
        "p90_ms": {name: percentile_ms(s, 0.9) for name, s in samples.items()},
        "ws_fraction_of_jupyter_client": medians["kernelserver_ws"] / medians["jupyter_client"],
        "ws_vs_http": medians["kernelserver_ws"] / medians["kernelserver_http"],
        "kernel_gateway_vs_ws": medians["kernel_gateway_ws"] / medians["kernelserver_ws"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(run(args.rounds, args.batch), indent=1))

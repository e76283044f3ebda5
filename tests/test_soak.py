"""Soak: 4 clients x 2 namespaces x thousands of mixed executions against a real server.

Every answer is checked against what the client knows it asked for, the server's memory must
stay flat after warm-up, and no kernel worker may outlive its namespace or the server.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kernelserver.backends.process import rss_bytes
from kernelserver.client import Client, Namespace
from kernelserver.results import ExecutionResult

from helpers import pid_alive, process_tree, server_pid, start_server, wait_until

pytestmark = pytest.mark.slow

CLIENTS = 4
NAMESPACES_PER_CLIENT = 2
WARMUP_ROUNDS = int(os.environ.get("KERNELSERVER_SOAK_WARMUP", "150"))
ROUNDS = int(os.environ.get("KERNELSERVER_SOAK_ROUNDS", "1000"))
# Weighted mix of what each round does; interrupts and timeouts cost ~0.1 s each, so they are
# rarer than plain cells but still number in the hundreds over a run.
MIX = {"ok": 30, "error": 12, "output": 15, "display": 10, "stream": 8, "variables": 5,
       "interrupt": 4, "timeout": 4}
HARD_TIMEOUT_EVERY = 250  # a cell that ignores SIGINT, so the worker is killed and restarted


def rss_kib(pid: int) -> int:
    """Resident set size of pid, in KiB."""
    rss = rss_bytes(pid)
    assert rss is not None, f"no VmRSS for {pid}"
    return rss // 1024


@dataclass
class Tally:
    """What one client did and every mismatch it saw."""

    kinds: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def check(self, condition: bool, what: str, result: ExecutionResult | None = None) -> None:
        if not condition and len(self.failures) < 20:
            self.failures.append(f"{what}: {result!r}")


class SoakClient:
    """One client driving its own namespaces; it tracks each namespace's counter to check results."""

    def __init__(self, url: str, token: str, index: int) -> None:
        self.client = Client(url, token=token, timeout=60)
        self.rng = random.Random(index)
        self.namespaces = [self.client.namespace(f"soak-{index}-{j}") for j in range(NAMESPACES_PER_CLIENT)]
        self.counters = {ns.id: 0 for ns in self.namespaces}
        self.tally = Tally()
        self.rounds = 0
        self.kinds = list(MIX)
        self.weights = list(MIX.values())

    def run(self, rounds: int) -> None:
        try:
            for _ in range(rounds):
                self.rounds += 1
                ns = self.namespaces[self.rounds % len(self.namespaces)]
                kind = "hard_timeout" if self.rounds % HARD_TIMEOUT_EVERY == 0 else \
                    self.rng.choices(self.kinds, self.weights)[0]
                self.tally.kinds[kind] += 1
                getattr(self, f"do_{kind}")(ns, self.rounds)
        except Exception as exc:  # any client-side exception is a failure of the server
            self.tally.failures.append(f"round {self.rounds}: {type(exc).__name__}: {exc}")

    def do_ok(self, ns: Namespace, i: int) -> None:
        self.counters[ns.id] += 1
        result = ns.run(f"n = globals().get('n', 0) + 1\nn * {i}")
        expected = {"text/plain": str(self.counters[ns.id] * i)}
        self.tally.check(result.ok and result.result == expected, f"ok {expected}", result)

    def do_error(self, ns: Namespace, i: int) -> None:
        result = ns.run(f"def f():\n    raise ValueError('soak {i}')\nf()")
        error = result.error
        self.tally.check(result.status == "error" and error is not None and error.ename == "ValueError"
                         and error.evalue == f"soak {i}" and "in f" in error.traceback
                         and "kernelserver" not in error.traceback, "error", result)

    def do_output(self, ns: Namespace, i: int) -> None:
        lines = i % 50 + 1
        result = ns.run(f"import sys\nfor k in range({lines}):\n    print('line', k, {i})\n"
                        f"print('err {i}', file=sys.stderr)")
        expected = "".join(f"line {k} {i}\n" for k in range(lines))
        self.tally.check(result.ok and result.stdout == expected and result.stderr == f"err {i}\n"
                         and result.result is None, "output", result)

    def do_display(self, ns: Namespace, i: int) -> None:
        result = ns.run(f"class H:\n    def _repr_html_(self):\n        return '<b>{i}</b>'\n"
                        f"display(H())\nprint('between')\ndisplay({{'text/plain': 'p{i}'}}, raw=True)")
        bundles = [d.get("data", d) for d in result.displays]
        self.tally.check(result.ok and len(bundles) == 2 and bundles[0].get("text/html") == f"<b>{i}</b>"
                         and bundles[1].get("text/plain") == f"p{i}" and result.stdout == "between\n",
                         "display", result)

    def do_stream(self, ns: Namespace, i: int) -> None:
        events = list(ns.run(f"print('s', {i})\nprint('t', {i})\n{i} + 1", stream=True))
        text = "".join(e.get("text", "") for e in events if e.get("event") == "stdout")
        last = events[-1] if events else {}
        self.tally.check(text == f"s {i}\nt {i}\n" and last.get("event") == "result"
                         and last.get("status") == "ok"
                         and last.get("result") == {"text/plain": str(i + 1)}, f"stream {events!r}")

    def do_variables(self, ns: Namespace, i: int) -> None:
        ns.run(f"soak_var = list(range({i % 7}))").raise_for_error()
        names = {v["name"]: v for v in ns.variables()}
        self.tally.check("soak_var" in names and names["soak_var"]["type"] == "list",
                         f"variables {sorted(names)}")

    def do_interrupt(self, ns: Namespace, i: int) -> None:
        started = ns.run("import time\nprint('before')\ntime.sleep(30)", wait=0)
        n = started.execution_count
        # The cell may still be queued or not yet in sleep; interrupt once it is running.
        wait_until(lambda: ns.execution(n).status == "running" and "before" in ns.execution(n).stdout,
                   10, 0.005)
        interrupted = ns.interrupt()
        result = ns.wait_for(n, timeout=20)
        self.tally.check(interrupted and result.status == "interrupted" and result.stdout == "before\n"
                         and result.error is not None and result.error.ename == "KeyboardInterrupt",
                         "interrupt", result)

    def do_timeout(self, ns: Namespace, i: int) -> None:
        result = ns.run("import time\ntime.sleep(30)", timeout=0.05)
        self.tally.check(result.status == "timeout" and not result.restarted and result.error is not None
                         and result.error.ename == "TimeoutError", "timeout", result)

    def do_hard_timeout(self, ns: Namespace, i: int) -> None:
        result = ns.run("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                        "time.sleep(30)", timeout=0.05)
        # Under load the 0.05 s deadline can pass before the cell reaches its SIG_IGN line: then
        # its interrupt stops it and nothing restarts. Either way the answer is a timeout, and
        # the namespace holds what the answer says (empty only after a restart).
        self.tally.check(result.status == "timeout" and result.error is not None
                         and result.error.ename == "TimeoutError", "hard timeout", result)
        if result.restarted:
            self.tally.kinds["hard_timeout_restarted"] += 1
            self.counters[ns.id] = 0
        after = ns.run("globals().get('n', 0)")
        self.tally.check(after.result == {"text/plain": str(self.counters[ns.id])},
                         "the namespace after a hard timeout", after)


def run_round(clients: list[SoakClient], rounds: int) -> None:
    threads = [threading.Thread(target=c.run, args=(rounds,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
        assert not thread.is_alive(), "a soak client hung"


def test_soak_mixed_executions_keep_answers_right_memory_flat_and_no_workers_left(tmp_path: Path) -> None:
    server = start_server(tmp_path, env={"KERNELSERVER_INTERRUPT_GRACE": "0.5"})
    clients: list[SoakClient] = []
    try:
        app_pid = server_pid(server.data_dir)
        clients = [SoakClient(server.url, server.token, c) for c in range(CLIENTS)]
        started = time.monotonic()
        run_round(clients, WARMUP_ROUNDS)
        rss_warm = rss_kib(app_pid)
        run_round(clients, ROUNDS // 2)
        rss_mid = rss_kib(app_pid)
        run_round(clients, ROUNDS - ROUNDS // 2)
        rss_end = rss_kib(app_pid)
        elapsed = time.monotonic() - started

        kinds = sum((c.tally.kinds for c in clients), Counter())
        failures = [f for c in clients for f in c.tally.failures]
        infos = clients[0].client.namespaces()
        executions = sum(info["execution_count"] for info in infos)
        errors = sum(kinds[k] for k in ("error", "interrupt", "timeout", "hard_timeout"))
        print(f"\nsoak: {executions} executions ({errors} ending in an error) in {elapsed:.1f} s, "
              f"rounds {dict(kinds)}; failures {len(failures)}; server RSS {rss_warm} KiB after "
              f"warm-up, {rss_mid} KiB mid, {rss_end} KiB end")
        assert not failures, "\n".join(failures)
        # Every kind ran, every answer matched; the counters prove state persisted in each namespace.
        assert set(kinds) == set(MIX) | {"hard_timeout", "hard_timeout_restarted"}
        for c in clients:
            for ns in c.namespaces:
                assert ns.run("globals().get('n', 0)").result == {"text/plain": str(c.counters[ns.id])}

        # Flat memory: after warm-up the server may fill bounded caches (SQLite's page cache), but
        # the second half of the run must not grow it by more than 512 bytes a round (a leaked
        # result per execution is several KiB).
        half = CLIENTS * (ROUNDS - ROUNDS // 2)
        assert (rss_end - rss_mid) * 1024 / half < 512, (rss_warm, rss_mid, rss_end)
        assert rss_end - rss_warm < 8192, (rss_warm, rss_mid, rss_end)

        # One worker per namespace, however many restarts; none after delete, none after stop.
        worker_pids = {info["pid"] for info in infos}
        assert len(infos) == CLIENTS * NAMESPACES_PER_CLIENT and None not in worker_pids
        tree = process_tree(server.proc.pid)
        assert worker_pids <= tree
        for c in clients:
            for ns in c.namespaces:
                ns.delete()
        assert not any(pid_alive(pid) for pid in worker_pids)
        assert clients[0].client.namespaces() == []
    finally:
        for c in clients:
            c.client.close()
        tree = process_tree(server.proc.pid)
        server.stop()
    assert wait_until(lambda: not any(pid_alive(pid) for pid in tree), 10), "processes outlived the server"

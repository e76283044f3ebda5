"""The benchmarks still run (smoke mode: tiny sizes, nothing timed or asserted about speed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_bench_smoke_runs_every_benchmark_and_prints_the_table(tmp_path: Path) -> None:
    raw = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--json", str(raw)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| execute `1+1` p50 |" in done.stdout
    for measure in ("jupyter_client", "Jupyter WebSocket", "Kernel Gateway", "namespace ready",
                    "streamed", "buffered", "4 clients", "idle namespace's memory (PSS)"):
        assert measure in done.stdout
    assert '"roundtrip"' in raw.read_text()


def test_versus_compares_two_checkouts_side_by_side() -> None:
    # This checkout against itself: proves the script runs and checks which tree each server runs.
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "versus.py"), "--base", str(ROOT),
                           "--rounds", "1", "--batch", "5", "--megabytes", "0.5"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT / "bench")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| execute `1+1` p50 |" in done.stdout and "after / before" in done.stdout

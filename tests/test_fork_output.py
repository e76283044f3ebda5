"""What every process of a namespace prints is kept whole: forked children, multiprocessing pools
of each start method, a DataLoader-style worker pool, subprocesses (issue 22, point 1).

Every case runs on both output writers: the C writer (_ringtext) and the pure-Python one.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from helpers import ApiClient

try:
    from kernelserver.backends import _ringtext  # type: ignore[attr-defined]
except ImportError:  # built by pip where a C compiler is (CI has one)
    _ringtext = None

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs memfd_create (Linux)")

WRITERS = [pytest.param("c", marks=pytest.mark.skipif(
    _ringtext is None, reason="kernelserver/backends/_ringtext.c was not built (no C compiler)")),
    "python"]


@pytest.fixture(scope="module", params=WRITERS)
def fapi(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[ApiClient]:
    """A process-backend app whose workers print through the writer under test."""
    from kernelserver import create_app

    from helpers import TOKEN

    saved = os.environ.pop("KERNELSERVER_PURE_PYTHON_OUTPUT", None)
    if request.param == "python":
        os.environ["KERNELSERVER_PURE_PYTHON_OUTPUT"] = "1"
    try:
        app: Flask = create_app({"token": TOKEN, "backend": "process",
                                 "data_dir": str(tmp_path_factory.mktemp("fork-data"))})
        client = ApiClient(app.test_client())
        client.run("print('warm')")  # the fork server is up with this writer
    finally:
        os.environ.pop("KERNELSERVER_PURE_PYTHON_OUTPUT", None)
        if saved is not None:
            os.environ["KERNELSERVER_PURE_PYTHON_OUTPUT"] = saved
    yield client
    app.extensions["kernelserver"].close()


@pytest.fixture
def ns(fapi: ApiClient, request: pytest.FixtureRequest) -> Iterator[Callable[..., dict[str, Any]]]:
    """A fresh namespace for one test: run(code) -> the execution result."""
    name = "f" + str(abs(hash(request.node.nodeid)) % 10**8)

    def run(code: str, **extra: Any) -> dict[str, Any]:
        extra.setdefault("timeout", 60)
        return fapi.run(code, id=name, **extra)

    assert fapi.create(name).status_code == 201
    yield run
    fapi.post("/env/delete", json={"id": name})


def assert_later_cells_print(run: Callable[..., dict[str, Any]]) -> None:
    """The namespace's printing is unharmed: three more cells each print exactly their line."""
    for i in range(3):
        result = run(f"print('after {i}')")
        assert result["status"] == "ok", result
        assert result["stdout"] == f"after {i}\n", result


def lines(text: str) -> Counter[str]:
    """The printed lines, counted."""
    return Counter(text.splitlines())


def test_a_forked_child_that_prints_a_lot_loses_nothing_and_harms_no_later_cell(ns: Any) -> None:
    result = ns("""
import os, sys
pid = os.fork()
if pid == 0:
    for i in range(5000):
        print(f"child line {i}")
    sys.stdout.flush()
    os._exit(0)
os.waitpid(pid, 0)
print("parent done")
""")
    assert result["status"] == "ok", result
    got = lines(result["stdout"])
    assert got == Counter([f"child line {i}" for i in range(5000)] + ["parent done"])
    assert not result["truncated"]
    assert_later_cells_print(ns)


def test_parent_and_child_lines_never_overwrite_each_other(ns: Any) -> None:
    # Python 3.12+ warns on stderr that forking a threaded process may deadlock (the worker has
    # threads, as ipykernel does); this test counts stderr's lines.
    result = ns("""
import os, sys, warnings
warnings.filterwarnings("ignore", "This process", DeprecationWarning)
pid = os.fork()
if pid == 0:
    for i in range(2000):
        print(f"child says hi {i}")
        print(f"child err {i}", file=sys.stderr)
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)
for i in range(2000):
    print(f"parent {i}")
os.waitpid(pid, 0)
""")
    assert result["status"] == "ok", result
    assert lines(result["stdout"]) == Counter(
        [f"child says hi {i}" for i in range(2000)] + [f"parent {i}" for i in range(2000)])
    assert lines(result["stderr"]) == Counter([f"child err {i}" for i in range(2000)])
    assert_later_cells_print(ns)


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_multiprocessing_pool_keeps_every_line(ns: Any, method: str) -> None:
    # print is a builtin: it pickles, so spawn and forkserver children can run it too.
    result = ns(f"""
import multiprocessing as mp
with mp.get_context({method!r}).Pool(4) as pool:
    pool.map(print, [f"pool line {{i}} " + "x" * (i % 97) for i in range(20000)], chunksize=50)
print("pool done")
""")
    assert result["status"] == "ok", result
    expected = Counter([f"pool line {i} " + "x" * (i % 97) for i in range(20000)] + ["pool done"])
    got = lines(result["stdout"])
    assert got == expected, (sum(got.values()), list((got - expected).items())[:5])
    assert_later_cells_print(ns)


def test_a_dataloader_style_worker_pool(ns: Any) -> None:
    """Forked workers that print while the parent consumes their batches and prints too."""
    result = ns("""
import multiprocessing as mp
ctx = mp.get_context("fork")
batches = ctx.Queue()
def work(worker):
    for b in range(500):
        print(f"worker {worker} loading batch {b}")
        batches.put((worker, b))
workers = [ctx.Process(target=work, args=(w,)) for w in range(3)]
for w in workers:
    w.start()
for _ in range(1500):
    worker, b = batches.get(timeout=30)
    print(f"main got {worker}/{b}")
for w in workers:
    w.join(30)
""")
    assert result["status"] == "ok", result
    got = lines(result["stdout"])
    assert got == Counter([f"worker {w} loading batch {b}" for w in range(3) for b in range(500)]
                          + [f"main got {w}/{b}" for w in range(3) for b in range(500)])
    assert_later_cells_print(ns)


def test_a_subprocess_and_its_parent(ns: Any) -> None:
    result = ns("""
import subprocess, sys
print("before")
subprocess.run([sys.executable, "-c", "for i in range(5000): print('sub', i)"], check=True)
print("after")
""")
    assert result["status"] == "ok", result
    out = result["stdout"].splitlines()
    assert out[0] == "before" and out[-1] == "after"
    assert out[1:-1] == [f"sub {i}" for i in range(5000)]
    assert_later_cells_print(ns)


def test_a_child_that_outlives_its_cell_prints_into_no_later_cell_s_ring(ns: Any) -> None:
    """A child still printing when its cell ends never garbles what later cells print."""
    first = ns("""
import os, time
pid = os.fork()
if pid == 0:
    for i in range(300):
        print(f"late {i}", flush=True)
        time.sleep(0.002)
    os._exit(0)
print("first")
""")
    assert first["status"] == "ok", first
    for i in range(20):
        result = ns(f"print('cell {i}')")
        assert f"cell {i}" in result["stdout"].splitlines(), result
        for line in result["stdout"].splitlines():
            assert line == f"cell {i}" or (line.startswith("late ") and line[5:].isdigit()), result
    ns("import os\ntry:\n    os.waitpid(pid, 0)\nexcept ChildProcessError:\n    pass")

"""The registry with a slow fake backend: a visible `starting` state, one start per id, bounded starts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, ClassVar

import pytest

from kernelserver.backends.base import ExitReason, NamespaceOptions, OutputSink, Resources
from kernelserver.config import load_config
from kernelserver.errors import NamespaceUnavailable, TooManyNamespaces
from kernelserver.namespace import Namespace
from kernelserver.registry import Registry
from kernelserver.results import Cell, Outcome

from helpers import wait_until


class FakeKernel:
    """Runs nothing: a cell's code is echoed to stdout; remembers whether it was closed."""

    runs_inline = True

    def __init__(self) -> None:
        self.closed = False

    def execute(self, cell: Cell, execution_count: int, sink: OutputSink) -> Outcome:
        sink.write_stdout(cell.code)
        return Outcome("ok", result={"text/plain": str(execution_count)})

    def interrupt(self, execution_count: int) -> bool:
        return False

    def is_alive(self) -> bool:
        return not self.closed

    def variables(self) -> list[dict[str, Any]]:
        return []

    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        return {}

    def inspect(self, code: str, cursor_pos: int, detail_level: int) -> dict[str, Any]:
        return {}

    def restart(self) -> None:
        pass

    def details(self) -> dict[str, Any]:
        return {"fake": True}

    def close(self, reason: ExitReason = ExitReason.DELETED) -> None:
        self.closed = True


class SlowBackend:
    """Starts kernels only when the test lets it (or fails them), counting every start."""

    name: ClassVar[str] = "slow"
    default_syntax: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.release = threading.Event()
        self.fail_with: Exception | None = None
        self.starts: list[tuple[str, NamespaceOptions]] = []
        self.kernels: list[FakeKernel] = []

    def healthy(self) -> bool:
        return True

    def memory_limit_method(self) -> str:
        return "none"

    def start_kernel(self, namespace_id: str, options: NamespaceOptions) -> FakeKernel:
        self.starts.append((namespace_id, options))
        assert self.release.wait(30), "the test never released the start"
        if self.fail_with is not None:
            raise self.fail_with
        kernel = FakeKernel()
        self.kernels.append(kernel)
        return kernel

    def close(self) -> None:
        pass


@pytest.fixture
def slow() -> Iterator[SlowBackend]:
    backend = SlowBackend()
    yield backend
    backend.release.set()  # no start is left waiting on the test


def make_registry(backend: SlowBackend, **settings: Any) -> Registry:
    return Registry(load_config({"max_namespaces": 4, **settings}, environ={}), backend)


def create_in_thread(registry: Registry, namespace_id: str) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["created"] = registry.create(namespace_id)[1]
        except Exception as exc:  # noqa: BLE001 - the test reads it
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def state_of(registry: Registry, namespace_id: str) -> str:
    return next(ns.state for ns in registry.list() if ns.id == namespace_id)


def test_a_slow_start_is_visible_as_starting_and_callers_share_it(slow: SlowBackend) -> None:
    registry = make_registry(slow)
    callers = [create_in_thread(registry, "gpu") for _ in range(3)]
    assert wait_until(lambda: registry.ids() == ["gpu"], 5)
    assert state_of(registry, "gpu") == "starting"
    assert registry.get("gpu").info().to_dict()["state"] == "starting"
    time.sleep(0.2)  # a duration, not a wait: the callers must go on waiting while the start does
    assert all(thread.is_alive() for thread, _ in callers)  # every caller waits for the start
    slow.release.set()
    for thread, _ in callers:
        thread.join(10)
    assert len(slow.starts) == 1  # one start for one id, however many asked
    assert sorted(box["created"] for _, box in callers) == [False, False, True]
    assert state_of(registry, "gpu") == "idle"
    registry.close()
    assert slow.kernels[0].closed


def test_a_start_past_start_timeout_fails_every_caller_and_frees_the_id(slow: SlowBackend) -> None:
    registry = make_registry(slow, start_timeout=0.3)
    first, first_box = create_in_thread(registry, "slow")
    assert wait_until(lambda: len(slow.starts) == 1, 5)
    second, second_box = create_in_thread(registry, "slow")
    first.join(10)
    second.join(10)
    for box in (first_box, second_box):
        assert isinstance(box.get("error"), NamespaceUnavailable)
        assert "did not start within 0.3 s" in str(box["error"])
    assert registry.ids() == []
    # The kernel that comes up late belongs to nobody: it is closed, not leaked.
    slow.release.set()
    assert wait_until(lambda: len(slow.kernels) == 1 and slow.kernels[0].closed, 5)
    # The id is free: a new create starts a fresh namespace.
    namespace, created = registry.create("slow")
    assert created and namespace.state == "idle" and len(slow.starts) == 2
    registry.close()


def test_a_failed_start_fails_every_caller_and_queued_cells(slow: SlowBackend) -> None:
    registry = make_registry(slow)
    slow.fail_with = RuntimeError("no GPU left")
    first, first_box = create_in_thread(registry, "broken")
    assert wait_until(lambda: registry.ids() == ["broken"], 5)
    queued = registry.get("broken").submit(Cell("1 + 1"))
    assert queued.status == "queued"
    second, second_box = create_in_thread(registry, "broken")
    slow.release.set()
    first.join(10)
    second.join(10)
    for box in (first_box, second_box):
        assert isinstance(box.get("error"), NamespaceUnavailable)
        assert "could not start namespace 'broken': no GPU left" in str(box["error"])
    assert queued.wait(5) and queued.status == "error"
    assert queued.snapshot().error is not None
    assert queued.snapshot().error.ename == "NamespaceUnavailable"
    assert registry.ids() == []
    assert len(slow.starts) == 1


def test_a_failed_start_has_freed_its_id_when_its_caller_hears_of_it(
        slow: SlowBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    # A client that retries as soon as its create fails must get a fresh start, not the failed
    # namespace (still registered for a moment) and its old error: CI met exactly that, the
    # runner thread preempted between waking the caller and forgetting the namespace. The
    # pause below stands in for that preemption, in the failed start's clean-up.
    cancel = Namespace._cancel_queued

    def slow_cancel(namespace: Namespace, outcome: Outcome) -> None:
        time.sleep(0.3)
        cancel(namespace, outcome)

    monkeypatch.setattr(Namespace, "_cancel_queued", slow_cancel)
    registry = make_registry(slow)
    slow.fail_with = NamespaceUnavailable("this backend allows one shell")
    slow.release.set()
    with pytest.raises(NamespaceUnavailable, match="allows one shell"):
        registry.create("retried")
    assert registry.ids() == []
    slow.fail_with = None
    namespace, created = registry.create("retried")
    assert created and namespace.state == "idle" and len(slow.starts) == 2
    registry.close()


def test_cells_sent_while_starting_run_once_it_is_up(slow: SlowBackend) -> None:
    registry = make_registry(slow)
    creator, _ = create_in_thread(registry, "early")
    assert wait_until(lambda: registry.ids() == ["early"], 5)
    namespace = registry.get("early")
    first = namespace.submit(Cell("a"), inline=True)  # no kernel yet: queued, not run here
    second = namespace.submit(Cell("b"))
    assert (first.status, second.status) == ("queued", "queued")
    slow.release.set()
    creator.join(10)
    assert first.wait(5) and second.wait(5)
    assert [first.snapshot().stdout, second.snapshot().stdout] == ["a", "b"]
    assert [first.execution_count, second.execution_count] == [1, 2]
    registry.close()


def test_delete_while_starting_closes_the_kernel_when_it_arrives(slow: SlowBackend) -> None:
    registry = make_registry(slow)
    creator, box = create_in_thread(registry, "gone")
    assert wait_until(lambda: registry.ids() == ["gone"], 5)
    deleter = threading.Thread(target=registry.delete, args=("gone",))
    deleter.start()
    assert wait_until(lambda: registry.ids() == [], 5)
    slow.release.set()
    creator.join(10)
    deleter.join(15)
    assert isinstance(box.get("error"), NamespaceUnavailable)
    assert "deleted while it started" in str(box["error"])
    assert wait_until(lambda: slow.kernels and slow.kernels[0].closed, 5)


def test_starting_namespaces_count_against_the_limit(slow: SlowBackend) -> None:
    registry = make_registry(slow, max_namespaces=1)
    creator, _ = create_in_thread(registry, "one")
    assert wait_until(lambda: registry.ids() == ["one"], 5)
    with pytest.raises(TooManyNamespaces):
        registry.create("two")
    slow.release.set()
    creator.join(10)
    registry.close()


def test_options_reach_the_backend(slow: SlowBackend) -> None:
    registry = make_registry(slow)
    slow.release.set()
    options = NamespaceOptions(Resources(num_gpus=1, num_cpus=4, memory=16 << 30))
    registry.create("placed", options)
    # The syntax is decided before the start: the server's setting unless the namespace asked.
    assert slow.starts == [("placed", replace(options, syntax="ipython"))]
    registry.create("plain", NamespaceOptions(syntax="python"))
    assert slow.starts[1] == ("plain", NamespaceOptions(syntax="python"))
    registry.close()

"""A namespace's process tree: make its processes subreapers, find every descendant, kill them all.

A cell's subprocess may leave its process group (start_new_session, setsid, a double fork): a
group kill misses it, and it used to outlive delete, restart and the server. The worker and the
fork server are child subreapers (PR_SET_CHILD_SUBREAPER), so an orphan of the cell is
re-parented to the worker (or, once the worker is gone, to the fork server) instead of to init,
and stays findable from the /proc tree.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def become_subreaper() -> None:
    """Orphans among this process's descendants are re-parented to it, not to init."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Get signum when the parent process dies."""
    _prctl(PR_SET_PDEATHSIG, signum)


# Out of memory, the kernel kills the process with the highest score first: a namespace's
# processes before the fork server, the fork server before the server (0), which is the one
# whose death would take every namespace along.
OOM_SCORE_WORKER = 800
OOM_SCORE_FORKSERVER = 300


def raise_oom_score(adjustment: int) -> None:
    """Make this process (and what it forks) the kernel's earlier choice when memory runs out.
    Raising needs no privilege; where /proc is not writable, nothing changes."""
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write(str(adjustment))
    except OSError:
        pass


def children(pid: int) -> list[int]:
    """The direct children of pid (all its threads'), from /proc."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found.extend(int(child) for child in handle.read().split())
        except (OSError, ValueError):
            continue
    return found


def descendants(root: int) -> list[int]:
    """Every process below root, parents before their children."""
    found: list[int] = []
    todo = children(root)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children(pid))
    return found


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True  # gone already


def _kill_until_gone(find: Callable[[], list[int]], timeout: float) -> int:
    """SIGKILL what find() returns, again while anything is left alive (a fork in between), until
    it returns nothing; the number of signals sent. Bounded by timeout: a fork bomb outrunning it,
    or a process stuck in the kernel, is for the caller's next try."""
    killed = 0
    deadline = time.monotonic() + timeout
    while found := find():
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() >= deadline:
            break
        # A SIGKILLed process is dead only once the kernel has run its exit, which a busy
        # machine delays: a delete that answered while it still ran would be a lie.
        time.sleep(0.002)
    return killed


def kill_descendants(root: int, timeout: float = 5.0) -> int:
    """SIGKILL everything below root until every one is dead (_kill_until_gone)."""
    return _kill_until_gone(lambda: [pid for pid in descendants(root) if not _zombie(pid)], timeout)


def _session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def sessions_below(root: int) -> set[int]:
    """The session root leads and every session a process below it is in (a pty's shell, say)."""
    return {root} | {sid for pid in descendants(root) if (sid := _session_of(pid)) is not None}


def members(sids: set[int]) -> list[int]:
    """Every live process of those sessions (from /proc: a session outlives its leader)."""
    return [pid for pid in (int(e) for e in os.listdir("/proc") if e.isdigit())
            if _session_of(pid) in sids and not _zombie(pid)]


def kill_sessions(sids: set[int], timeout: float = 5.0) -> int:
    """SIGKILL every process of those sessions until none is left alive (_kill_until_gone)."""
    return _kill_until_gone(lambda: members(sids), timeout)


def wait_dead(pids: list[int], timeout: float = 5.0) -> bool:
    """Wait until each of pids is a zombie or gone; False if some still ran at the timeout."""
    deadline = time.monotonic() + timeout
    while any(not _zombie(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True

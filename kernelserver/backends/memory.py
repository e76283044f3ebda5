"""Per-namespace memory limits: a memory cgroup per namespace where the system lends one, else a watchdog.

What is limited is resident memory, never address space. RLIMIT_AS (or RLIMIT_DATA) would stop CUDA:
its runtime reserves tens of GiB of virtual address space when it starts (unified addressing), which
a process uses none of. A memory cgroup charges exactly the pages a namespace's processes touch
(its worker, every process a cell starts, the text it printed into its output ring) and the kernel
stops them the moment they go past; CUDA's reservations cost it nothing. The test suite checks that
a cell reserving 64 GiB of address space runs under a 256 MiB limit.

Three ways, the first that works here (setting `memory_limit_method`):

- cgroup v2: a group per namespace under the server's own cgroup, `memory.max` with
  `memory.oom.group` (the cell's processes die together) and no swap. v2 lets a cgroup hand
  controllers to children only when no process lives in it, so the server first moves its own
  processes (this gunicorn process, its master, the fork server, workers) into a leaf; it does so
  only when every process there is one of them (a systemd service, a container), and falls back
  otherwise rather than move anyone else's.
- cgroup v1: a group per namespace in the memory hierarchy, `memory.limit_in_bytes`.
- watchdog: the server samples the proportional set size of the worker and its descendants every
  POLL seconds while a cell runs and kills them past the limit. A cell can allocate for up to POLL
  seconds past it before it is stopped.

A group lives as long as its namespace; a worker started again (restart, after a death) joins it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import proctree

log = logging.getLogger("kernelserver")

POLL = 0.1  # seconds between checks while a cell runs
MIN_LIMIT = 64 << 20  # a worker's interpreter alone holds ~30 MiB: less than this cannot run a cell
METHODS = ("auto", "cgroup", "watchdog")


class Group(Protocol):
    """The memory limit of one namespace: its processes, what they use, whether they went past."""

    limit: int

    def attach(self, pid: int) -> None:
        """Put a (new) worker process in the group; its future children follow."""

    def arm(self) -> None:
        """A cell starts: what happened before is not its doing."""

    def exceeded(self, pid: int) -> int | None:
        """Bytes in use when the limit was passed since arm() (the kernel stopped a process, or
        the watchdog finds it past now), else None. pid is the worker's."""

    def usage(self, pid: int) -> int | None:
        """Bytes the namespace's processes use now (None where unknown)."""

    def close(self) -> None:
        """The namespace is gone: remove the group (any process still in it is killed first)."""


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _counter(text: str, key: str) -> int:
    """The value of `key N` in a cgroup's flat keyed file (memory.events, memory.oom_control)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _safe_name(namespace_id: str, number: int) -> str:
    return f"ns-{re.sub(r'[^A-Za-z0-9_.-]', '_', namespace_id)[:40]}-{number}"


class _CgroupGroup:
    """One namespace's cgroup, v1 or v2: the files differ, the life is the same."""

    def __init__(self, path: Path, limit: int, version: int) -> None:
        self.path = path
        self.limit = limit
        self.version = version
        self._armed_kills = 0
        path.mkdir()
        if version == 2:
            _write(path / "memory.max", str(limit))
            _write(path / "memory.oom.group", "1")  # the whole cell stops, not just its biggest part
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", "0")  # past the limit is stopped, not swapped
        else:
            _write(path / "memory.limit_in_bytes", str(limit))
            if (path / "memory.memsw.limit_in_bytes").exists():
                try:
                    _write(path / "memory.memsw.limit_in_bytes", str(limit))
                except OSError:
                    pass  # swap accounting off: nothing to swap to past the limit anyway

    def attach(self, pid: int) -> None:
        _write(self.path / "cgroup.procs", str(pid))

    def _kills(self) -> int:
        try:
            if self.version == 2:
                return _counter(_read(self.path / "memory.events"), "oom_kill")
            return _counter(_read(self.path / "memory.oom_control"), "oom_kill")
        except (OSError, ValueError):
            return 0

    def arm(self) -> None:
        self._armed_kills = self._kills()

    def exceeded(self, pid: int) -> int | None:
        if self._kills() <= self._armed_kills:
            return None
        self._armed_kills = self._kills()
        return self._peak()

    def _peak(self) -> int:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int(_read(self.path / name))
        except (OSError, ValueError):
            return self.limit

    def usage(self, pid: int) -> int | None:
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        try:
            return int(_read(self.path / name))
        except (OSError, ValueError):
            return None

    def _pids(self) -> list[int]:
        try:
            return [int(p) for p in _read(self.path / "cgroup.procs").split()]
        except (OSError, ValueError):
            return []

    def close(self) -> None:
        for _ in range(50):
            pids = self._pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.02)  # the fork server reaps them; the group empties as they exit
        try:
            self.path.rmdir()
        except OSError as exc:
            log.warning("could not remove the memory cgroup %s: %s", self.path, exc)


class _WatchdogGroup:
    """A limit kept by sampling: the worker's tree, its proportional set size, every POLL s."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def attach(self, pid: int) -> None:
        pass

    def arm(self) -> None:
        pass

    def usage(self, pid: int) -> int | None:
        return sum(_pss(p) for p in [pid, *proctree.descendants(pid)])

    def exceeded(self, pid: int) -> int | None:
        used = self.usage(pid)
        return used if used is not None and used > self.limit else None

    def close(self) -> None:
        pass


def watchdog(limit: int) -> Group:
    """A group kept by sampling (where a cgroup could not take a worker)."""
    return _WatchdogGroup(limit)


def _pss(pid: int) -> int:
    """A process's proportional set size (pages shared with n others count 1/n), else its RSS."""
    found = proc_kib(f"/proc/{pid}/smaps_rollup", "Pss:") or proc_kib(f"/proc/{pid}/status", "VmRSS:")
    return (found or 0) * 1024


def proc_kib(path: str, key: str) -> int | None:
    """The `key N kB` value in a /proc file (None where the file or the key is not there)."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass(frozen=True)
class _Mount:
    version: int
    root: str  # the mount's root within the hierarchy
    point: Path


def _mounts(mountinfo: str) -> Iterator[_Mount]:
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        fstype, options = after[0], after[2] if len(after) > 2 else ""
        if fstype == "cgroup2":
            yield _Mount(2, fields[3], Path(fields[4]))
        elif fstype == "cgroup" and "memory" in options.split(","):
            yield _Mount(1, fields[3], Path(fields[4]))


def _own_path(cgroups: str, version: int) -> str | None:
    """This process's cgroup in the v2 hierarchy, or in the v1 memory one."""
    for line in cgroups.splitlines():
        number, controllers, path = line.split(":", 2)
        if version == 2 and number == "0" and controllers == "":
            return path
        if version == 1 and "memory" in controllers.split(","):
            return path
    return None


def _under(mount: _Mount, path: str) -> Path:
    relative = path[len(mount.root):] if path.startswith(mount.root) and mount.root != "/" else path
    return mount.point / relative.lstrip("/")


def _sweep(own: Path) -> None:
    """Remove the groups a server that was killed left behind (its processes are gone with it)."""
    for stale in own.glob("kernelserver-*"):
        pid = stale.name.removeprefix("kernelserver-")
        if not pid.isdigit() or int(pid) == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        for group in [p for p in stale.iterdir() if p.is_dir()]:
            try:
                group.rmdir()
            except OSError:
                pass
        try:
            stale.rmdir()
        except OSError:
            pass


class Limits:
    """Makes each namespace's Group: under the server's cgroup where it can, else watchdogs."""

    def __init__(self, method: str = "auto", proc: Path = Path("/proc"),
                 server_pids: Callable[[], frozenset[int]] = lambda: frozenset()) -> None:
        self.method = "watchdog"
        self.why = "memory limits use the watchdog (setting memory_limit_method)"
        self._base: Path | None = None
        self._version = 0
        self._count = 0
        if method in ("auto", "cgroup"):
            self._find_cgroup(proc, server_pids)

    def _find_cgroup(self, proc: Path, server_pids: Callable[[], frozenset[int]]) -> None:
        try:
            mountinfo = _read(proc / "self" / "mountinfo")
            cgroups = _read(proc / "self" / "cgroup")
        except OSError as exc:
            self.why = f"no cgroups here ({exc}); memory limits use the watchdog"
            return
        reasons = []
        for mount in sorted(_mounts(mountinfo), key=lambda m: -m.version):
            own = _own_path(cgroups, mount.version)
            if own is None:
                continue
            where = _under(mount, own)
            try:
                base = (self._v2_base(where, proc, server_pids) if mount.version == 2
                        else self._v1_base(where))
            except OSError as exc:
                reasons.append(f"cgroup v{mount.version} at {where}: {exc.strerror or exc}")
                continue
            if base is None:
                reasons.append(f"cgroup v{mount.version} at {where}: no memory controller")
                continue
            self._base, self._version = base, mount.version
            self.method = f"cgroup v{mount.version}"
            self.why = f"memory limits are cgroup v{mount.version} groups under {base}"
            return
        self.why = ("memory limits use the watchdog: " + "; ".join(reasons) if reasons
                    else "memory limits use the watchdog: no memory cgroup hierarchy here")

    def _v1_base(self, own: Path) -> Path | None:
        if not (own / "memory.limit_in_bytes").exists():
            return None
        _sweep(own)
        base = own / f"kernelserver-{os.getpid()}"
        base.mkdir(exist_ok=True)
        return base

    def _v2_base(self, own: Path, proc: Path, server_pids: Callable[[], frozenset[int]]
                 ) -> Path | None:
        if "memory" not in _read(own / "cgroup.controllers").split():
            return None
        if "memory" not in _read(own / "cgroup.subtree_control").split():
            # Only a cgroup without processes may hand memory to children: move this server's
            # processes into a leaf first, and only when nobody else's is there.
            procs = [int(p) for p in _read(own / "cgroup.procs").split()]
            ours = server_pids()
            strangers = [p for p in procs if p not in ours]
            if strangers:
                raise OSError(0, f"it holds processes other than this server's ({strangers[0]}, "
                                 "...); run kernelserver in a cgroup of its own (a systemd service, "
                                 "a container) for cgroup limits")
            leaf = own / "kernelserver-server"
            leaf.mkdir(exist_ok=True)
            for pid in procs:
                _write(leaf / "cgroup.procs", str(pid))
            _write(own / "cgroup.subtree_control", "+memory")
        _sweep(own)
        base = own / f"kernelserver-{os.getpid()}"
        base.mkdir(exist_ok=True)
        _write(base / "cgroup.subtree_control", "+memory")
        return base

    def group(self, namespace_id: str, limit: int) -> Group:
        """A new group for a namespace, limited to limit bytes."""
        if self._base is not None:
            self._count += 1
            try:
                return _CgroupGroup(self._base / _safe_name(namespace_id, self._count), limit,
                                    self._version)
            except OSError as exc:
                log.warning("memory cgroup for %r failed (%s); it is watched instead",
                            namespace_id, exc)
        return _WatchdogGroup(limit)

    def close(self) -> None:
        """Remove the server's cgroup (its namespaces' groups are gone by now)."""
        if self._base is not None:
            try:
                self._base.rmdir()
            except OSError:
                pass


def server_processes(proc: Path = Path("/proc")) -> frozenset[int]:
    """This process, its parent (gunicorn's master) and every descendant of that parent."""
    parent = os.getppid()
    return frozenset({os.getpid(), parent, *proctree.descendants(parent)})

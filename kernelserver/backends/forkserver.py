"""A small preloaded process that forks namespace workers in a few milliseconds.

The server starts it once as a fresh interpreter with a clean environment (no token) and no
inherited sockets, so every worker forked from it has neither. It reaps its children and reports
their exit statuses, because the server is not their parent and cannot wait for them itself.

Messages on its SOCK_SEQPACKET socket are JSON, one per packet:
  server → fork server: {"op": "spawn", "prefix": hex, "options": {...}} + fds
      [ctl, query, stdout_w, stderr_w] and, where the server made one, the rings' memfd
  fork server → server: {"op": "spawned", "pid": N} | {"op": "spawn_failed", "error": str}
                        | {"op": "exit", "pid": N, "status": raw wait status}
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import proctree
from .protocol import OLDEST, Op

MAX_PACKET = 1 << 16


def _child(sock: socket.socket, wakeup_r: int, wakeup_w: int, fds: list[int],
           message: dict[str, Any]) -> None:
    """In the forked child: become a worker. Never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.setpgid(0, 0)  # its own group, so a kill reaches the subprocesses it starts too
        proctree.die_with_parent(signal.SIGKILL)
        # What a cell starts and detaches (setsid, a double fork) stays below the worker.
        proctree.become_subreaper()
        proctree.raise_oom_score(proctree.OOM_SCORE_WORKER)
        sock.close()
        os.close(wakeup_r)
        os.close(wakeup_w)
        ctl_fd, query_fd, out_w, err_w, *ring = fds  # the rings' memfd, where there is one
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(out_w)
        os.close(err_w)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        from .worker import main

        code = main(socket.socket(fileno=ctl_fd), socket.socket(fileno=query_fd),
                    bytes.fromhex(message["prefix"]), message.get("options", {}),
                    ring[0] if ring else None)
    except BaseException:  # noqa: BLE001 - report anything on the worker's stderr, then exit
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _kill_orphans(workers: set[int]) -> None:
    """Kill what a worker left behind when it died, re-parented here (we are a subreaper), and
    wait until it is dead: the exit is reported after, and a delete answers only then."""
    orphans = [child for child in proctree.children(os.getpid()) if child not in workers]
    for child in orphans:
        proctree.kill_descendants(child)
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proctree.wait_dead(orphans)


def _take_everything_along(signum: int, frame: object) -> None:
    proctree.kill_descendants(os.getpid())
    os._exit(0)


def serve(fd: int) -> None:
    """The fork server's loop: fork on request, report exits, stop when the server goes away."""
    sock = socket.socket(fileno=fd)
    wakeup_r, wakeup_w = os.pipe()
    os.set_blocking(wakeup_w, False)
    # A parent that blocks signals (a Ray worker blocks SIGINT) passes the mask on through fork
    # and exec: cleared here, or no interrupt would ever reach a worker.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.set_wakeup_fd(wakeup_w)
    signal.signal(signal.SIGCHLD, lambda *args: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # If the server dies (even by SIGKILL) take every namespace's processes along: the workers
    # would die by their own parent-death signal, but not what their cells started.
    signal.signal(signal.SIGTERM, _take_everything_along)
    proctree.die_with_parent(signal.SIGTERM)
    # What a dead worker leaves behind is re-parented here, where it is found and killed.
    proctree.become_subreaper()
    proctree.raise_oom_score(proctree.OOM_SCORE_FORKSERVER)
    workers: set[int] = set()
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "sock")
    selector.register(wakeup_r, selectors.EVENT_READ, "wakeup")

    def send(message: dict[str, Any]) -> None:
        try:
            sock.send(json.dumps(message).encode())
        except OSError:
            # The server closed us while we reaped or forked (it is stopping): as an EOF,
            # nothing of any namespace stays, and quietly.
            proctree.kill_descendants(os.getpid())
            os._exit(0)

    while True:
        for key, _ in selector.select():
            if key.data == "wakeup":
                os.read(wakeup_r, 4096)
                exits = []
                while True:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    if pid in workers:
                        workers.discard(pid)
                        exits.append({"op": Op.EXIT, "pid": pid, "status": status})
                if exits:
                    # Before the exit is reported: a delete returns with nothing of it left.
                    _kill_orphans(workers)
                for message in exits:
                    send(message)
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, MAX_PACKET, 8)
            except OSError:
                data, fds = b"", []
            if not data:  # the server closed us: nothing of any namespace stays
                proctree.kill_descendants(os.getpid())
                return
            try:
                message = json.loads(data)
                if len(fds) not in (4, 5):
                    raise ValueError(f"expected 4 or 5 fds, got {len(fds)}")
                pid = os.fork()
            except Exception as exc:
                for extra in fds:
                    os.close(extra)
                send({"op": Op.SPAWN_FAILED, "error": f"{type(exc).__name__}: {exc}"})
                continue
            if pid == 0:
                _child(sock, wakeup_r, wakeup_w, fds, message)
            for extra in fds:
                os.close(extra)
            workers.add(pid)
            send({"op": Op.SPAWNED, "pid": pid})


_launcher: tuple[int, ThreadPoolExecutor] | None = None  # (its process, one long-lived thread)
_launcher_lock = threading.Lock()


def _popen_from_a_lasting_thread(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen, called on a thread that lives as long as this process.

    The fork server dies with its parent (PR_SET_PDEATHSIG), and Linux reads "parent" as the
    *thread* that forked it: started from a namespace's thread (another environment's fork
    server, or one restarted after a cell killed it), it would die with that namespace, and
    every worker with it.
    """
    global _launcher
    if threading.current_thread() is threading.main_thread():
        return subprocess.Popen(argv, **kwargs)
    with _launcher_lock:
        if _launcher is None or _launcher[0] != os.getpid():  # none yet, or made before a fork
            _launcher = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="forkserver-launcher"))
        pool = _launcher[1]
    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, **kwargs)

    return pool.submit(popen).result()


class ForkServerError(RuntimeError):
    """The fork server could not start or could not fork a worker."""


class ForkServer:
    """The server side of the fork server: spawn workers, learn when they exit."""

    def __init__(self, preload: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 python: str | None = None) -> None:
        self._preload = preload
        self._env = env
        self.python = python or sys.executable  # another environment's interpreter may run it
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawn_lock = threading.Lock()
        self._replies: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._exits: dict[int, int] = {}
        self._reader: threading.Thread | None = None
        self._closed = False
        self._closing = False
        self.lost = False  # it died without being closed: its workers are gone too

    def start(self, timeout: float = 30.0) -> None:
        """Launch the fork server process and wait until it has imported the worker code."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ if self._env is None else self._env)
        env.pop("KERNELSERVER_TOKEN", None)
        preload = ",".join(self._preload)
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        # -c rather than -m: import kernelserver from where the server got it, whatever the cwd,
        # without putting anything on the workers' PYTHONPATH. An interpreter too old for the
        # worker says so in one line (in syntax every Python 3 reads) instead of a SyntaxError.
        bootstrap = (
            "import sys, socket, json\n"
            f"if sys.version_info < {OLDEST!r}:\n"
            "    socket.socket(fileno=int(sys.argv[1])).send(json.dumps({'op': 'failed', 'error': "
            f"'Python %d.%d is older than {OLDEST[0]}.{OLDEST[1]}, the oldest the worker runs on' "
            "% sys.version_info[:2]}).encode())\n"
            "    sys.exit(1)\n"
            f"sys.path.insert(0, {package_parent!r})\n"
            "from kernelserver.backends.forkserver import _main; _main(sys.argv)")
        try:
            self._proc = _popen_from_a_lasting_thread(
                [self.python, "-c", bootstrap, str(child.fileno()), preload],
                pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL,
                close_fds=True, start_new_session=True,
            )
        except OSError as exc:
            parent.close()
            raise ForkServerError(f"cannot run {self.python}: {exc.strerror or exc}") from None
        finally:
            child.close()
        self._sock = parent
        parent.settimeout(timeout)
        try:
            ready = json.loads(parent.recv(MAX_PACKET) or b"{}")
        except (OSError, ValueError) as exc:
            self.close()
            raise ForkServerError(f"fork server did not start: {exc}") from None
        if ready.get("op") != Op.READY:
            self.close()
            why = ready.get("error") or (f"{self.python} exited with {self._proc.poll()}"
                                         if self._proc is not None else "no answer")
            raise ForkServerError(f"fork server failed to start: {why}")
        parent.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name="forkserver-reader",
                                        daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        """The fork server's own pid."""
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        """True while it can fork workers."""
        return self._sock is not None and not self._closed

    def _read_loop(self) -> None:
        sock = self._sock  # close() may set the attribute to None while this reads
        assert sock is not None
        while True:
            try:
                data = sock.recv(MAX_PACKET)
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    # Gone: closed by us, or died (killed by a cell: every worker it forked died
                    # with it, by their parent-death signal). Reap it either way: no zombie.
                    self.lost = not self._closing
                    self._closed = True
                    self._cond.notify_all()
                    break
                message = json.loads(data)
                if message["op"] == Op.EXIT:
                    self._exits[message["pid"]] = message["status"]
                else:
                    self._replies.append(message)
                self._cond.notify_all()
        if self._proc is not None:
            try:
                self._proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5.0)

    def spawn(self, fds: list[int], prefix: bytes, options: dict[str, Any],
              timeout: float = 10.0) -> int:
        """Fork a worker with these [ctl, query, stdout_w, stderr_w] fds; returns its pid."""
        if self._sock is None or self._closed:
            raise ForkServerError("the fork server is not running")
        message = json.dumps({"op": Op.SPAWN, "prefix": prefix.hex(), "options": options})
        with self._spawn_lock:
            socket.send_fds(self._sock, [message.encode()], fds)
            with self._cond:
                if not self._cond.wait_for(lambda: self._replies or self._closed, timeout):
                    raise ForkServerError(f"the fork server did not answer within {timeout} s")
                if not self._replies:
                    raise ForkServerError("the fork server exited")
                reply = self._replies.pop(0)
        if reply["op"] != Op.SPAWNED:
            raise ForkServerError(f"could not fork a worker: {reply.get('error')}")
        return int(reply["pid"])

    def exit_status(self, pid: int) -> int | None:
        """The raw wait status of a worker that has exited, else None."""
        with self._cond:
            return self._exits.get(pid)

    def wait(self, pid: int, timeout: float) -> int | None:
        """Wait up to timeout for a worker to exit; its raw wait status, or None."""
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits or self._closed, timeout)
            return self._exits.get(pid)

    def forget(self, pid: int) -> None:
        """Drop a reaped worker's status once nobody needs it."""
        with self._cond:
            self._exits.pop(pid, None)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the fork server (its workers exit on their own when their sockets close)."""
        self._closing = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)


def _tell(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send the server how the start went; a server that stopped meanwhile gets no traceback."""
    try:
        sock.send(json.dumps(message).encode())
    except OSError:  # the server closed its end (it is stopping): nothing is waiting for us
        raise SystemExit(0) from None


def _main(argv: list[str]) -> None:
    fd = int(argv[1])
    preload = [name for name in (argv[2] if len(argv) > 2 else "").split(",") if name]
    sock = socket.socket(fileno=fd)
    sys.path.pop(0)  # the bootstrap's entry: workers see the interpreter's own path
    try:
        import importlib

        importlib.import_module("kernelserver.backends.worker")
        for name in preload:
            importlib.import_module(name)
    except BaseException as exc:  # noqa: BLE001 - report to the server, which shows it
        _tell(sock, {"op": Op.FAILED, "error": f"{type(exc).__name__}: {exc}"})
        raise SystemExit(1) from None
    try:
        # IPython imported and a shell built once, here: each worker forked from now on makes
        # its namespace's shell in about a millisecond. Without IPython this does nothing.
        from kernelserver.runner import ipython

        ipython.preload()
    except Exception as exc:  # noqa: BLE001 - a broken IPython costs speed, not the server
        print(f"kernelserver: IPython not preloaded ({type(exc).__name__}: {exc}); "
              "namespaces load it themselves", file=sys.stderr)
    # Everything imported so far into the permanent generation: a worker's collections then
    # never walk (and, by touching, copy) the pages it shares with this process. A namespace
    # starts in ~2 ms instead of 2-20 ms, and keeps fewer pages of its own.
    gc.collect()
    gc.freeze()
    _tell(sock, {"op": Op.READY})
    sock.detach()
    serve(fd)


if __name__ == "__main__":
    _main(sys.argv)

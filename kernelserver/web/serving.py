"""How kernelserver runs under gunicorn: its options, and the gthread worker, hardened.

Exactly one worker process (namespaces live in its memory) with many threads, no silence timeout
(a long cell is not a hung worker), and the worker's exit hook stops every namespace.

The stock gthread worker has holes that let stalled or lingering clients stop the server; the
worker class here closes them:

- gthread hands a connection to a thread as soon as some bytes arrive; the thread then blocks
  until the whole request is read. Without a socket timeout (kernelserver runs gunicorn with
  timeout=0 so long cells live), a client that sends half a request and stalls holds that thread
  forever, and `threads` such clients starve the server. Each read now waits at most
  `request_read_timeout`.
- A connection that is not kept alive is closed "gracefully" on the worker's event loop: gunicorn
  half-closes it and waits up to 2 s for the peer to close too. A client that sends
  `Connection: close` and then holds its socket open freezes every other request for those 2 s,
  without a token. The lingering now happens on one closer thread that waits on all such sockets
  at once.
- gunicorn ignores an app's `Connection: close`, and before reusing a connection drains any body
  the app left unread, for up to 5 s on a thread. kernelserver closes connections whose request it
  refused, and the worker now honours that.
- Even with a header deadline, a client that sends part of its headers holds a thread until the
  deadline, so `threads` such connections, renewed, starve the server without a token
  (slowloris). Request headers are now read on the event loop, which waits on any number of
  sockets at once; a connection reaches a thread only with its whole header block in hand. (Not
  with TLS, whose handshake gunicorn does on the thread: there the deadline is the bound, and a
  TLS-terminating proxy in front is the remedy.)
- gunicorn answers a request it cannot parse with an HTML page that echoes what it refused (a
  request line with its `?token=`), and logs it; a malformed chunked body raised out of the app's
  read as a 500 with a traceback. Both are now a 4xx in the one JSON error shape, and one log line
  at most, and every log record of the process goes through requestlog's redaction: the token
  (and any `token=` query value or Authorization value) never reaches the log.
"""

from __future__ import annotations

import functools
import io
import selectors
import threading
import time
from collections.abc import Callable
from typing import Any

from gunicorn import util
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import ThreadWorker

from .allocator import release_large_blocks
from .refusals import (
    CHUNK_ERRORS,
    HEAD_ENDS,
    MAX_DETAIL,
    MAX_HEAD_BYTES,
    READ_CHUNK,
    CheckedBody,
    Closer,
    close_quietly,
    json_answer,
    refusal,
    too_large_answer,
)
from .requestlog import Redactor, install_log_redaction


class ReadTimeoutWorker(ThreadWorker):
    """ThreadWorker with per-read timeouts and lingering closes off its event loop."""

    read_timeout: float = 15.0

    def init_process(self) -> None:
        # Before anything can log: the token is added once the app is loaded (load_wsgi).
        self.redactor = Redactor()
        install_log_redaction(self.redactor)
        self.closer = Closer()
        # Connections whose request headers are arriving, read on the event loop, with their
        # deadlines. Insertion order is deadline order (each is now + the same timeout, and a
        # connection leaves before it comes back), so expiry looks only at the oldest.
        self.heading: dict[Any, float] = {}
        release_large_blocks()
        super().init_process()

    # -- request headers, read on the event loop --

    def enqueue_req(self, conn: Any) -> None:
        """Hand conn to a thread once its next request's header block is in."""
        if self.cfg.is_ssl or getattr(conn, "is_http2", False):
            super().enqueue_req(conn)
            return
        head = bytearray()
        if conn.parser is not None:
            # Bytes already read past the last request (pipelined) are the start of this one.
            unreader = conn.parser.unreader
            head += unreader.buf.getvalue()
            unreader.buf = io.BytesIO()
        conn.head = head
        conn.sock.setblocking(False)
        self.heading[conn] = time.monotonic() + self.read_timeout
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             functools.partial(self._on_head_readable, conn))
        if head:
            self._check_head(conn, len(head))
        else:
            self._on_head_readable(conn, conn.sock)  # often in already: no turn of the loop

    def _on_head_readable(self, conn: Any, _sock: Any) -> None:
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before sending a whole request
            self._drop_heading(conn)
            return
        conn.head += data
        self._check_head(conn, len(data))

    def _check_head(self, conn: Any, new: int) -> None:
        head = conn.head
        if head[:1] in (b"\r", b"\n"):
            # Empty lines before a request line are allowed (RFC 9112 section 2.2); drop them so
            # they are not taken for the end of the headers.
            del head[:len(head) - len(head.lstrip(b"\r\n"))]
        # Only the new bytes (and the three before them) can complete the end: a header trickled
        # a byte at a time must not be searched whole on every byte.
        window = head[max(0, len(head) - new - 3):]
        if any(end in window for end in HEAD_ENDS):
            self._stop_heading(conn)
            conn.pending_head = bytes(head)
            conn.data_ready = True  # gunicorn 27 would otherwise wait for data on the thread
            conn.sock.setblocking(True)
            super().enqueue_req(conn)
        elif len(head) > MAX_HEAD_BYTES:
            try:
                conn.sock.send(too_large_answer())
            except OSError:
                pass
            self._drop_heading(conn, linger=True)

    def _drop_heading(self, conn: Any, linger: bool = False) -> None:
        """Stop reading conn's headers and close it (lingering, when it was sent an answer)."""
        self._stop_heading(conn)
        self.nr_conns -= 1
        if linger:
            self.closer.close(conn.sock)
        else:
            close_quietly(conn.sock)

    def _stop_heading(self, conn: Any) -> None:
        del self.heading[conn]
        conn.head = None
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def murder_pending(self) -> None:
        """Also close connections whose headers did not arrive in time (all of them when stopping)."""
        super().murder_pending()
        now = time.monotonic()
        while self.heading:
            conn, deadline = next(iter(self.heading.items()))
            if deadline > now and self.alive:
                break
            # Closed quietly, as a client that went away: a log line per stalled connection
            # would let anyone fill the server's log.
            self._drop_heading(conn)

    # -- stopping: tell open WebSockets the server goes away, so their threads end at once --

    def _run_stop_hooks(self, wait: float) -> None:
        app = getattr(getattr(self, "wsgi", None), "__wrapped__", None)
        hooks = list(getattr(app, "extensions", {}).get("kernelserver.on_stop", []))
        if not hooks:
            return

        def run() -> None:
            for hook in hooks:
                try:
                    hook()
                except Exception:  # a failing hook must not stop the others or the exit
                    self.log.exception("kernelserver: a stop hook failed")

        # Off the signal handler's thread (the event loop): a close may wait on a slow peer.
        thread = threading.Thread(target=run, name="stop-hooks", daemon=True)
        thread.start()
        thread.join(wait)

    def handle_exit(self, sig: Any, frame: Any) -> None:
        """SIGTERM: graceful; WebSockets are closed (1001) so the graceful wait is short."""
        was_alive = self.alive
        super().handle_exit(sig, frame)
        if was_alive:
            self._run_stop_hooks(0.0)

    def handle_quit(self, sig: Any, frame: Any) -> None:
        """SIGQUIT/SIGINT: quick; WebSockets still get their close frame first (bounded)."""
        self._run_stop_hooks(1.0)
        super().handle_quit(sig, frame)

    def notify(self) -> None:
        # The heartbeat, a utime() on a temp file at every turn of the event loop (~10% of a
        # small request here), only feeds the arbiter's silence timeout; ours is off (0).
        if self.cfg.timeout:
            super().notify()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app: Any = self.wsgi  # type: ignore[has-type]
        service = getattr(app, "extensions", {}).get("kernelserver")
        if service is not None:
            self.redactor.add(service.token)

        def honour_connection_close(environ: dict[str, Any], start_response: Any) -> Any:
            # (And check the body: a malformed one is the client's 400, see CheckedBody.)
            body = environ.get("wsgi.input")
            if body is not None:
                environ["wsgi.input"] = CheckedBody(body)

            def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                if any(k.lower() == "connection" and v.lower() == "close" for k, v in headers):
                    # gunicorn drops the app's hop-by-hop headers; its response object (the
                    # owner of start_response) is the one place to ask for a close.
                    force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                    if force_close is not None:
                        force_close()
                return start_response(status, headers, exc_info)

            return app(environ, start)

        honour_connection_close.__wrapped__ = app  # type: ignore[attr-defined]
        self.wsgi = honour_connection_close

    def handle_error(self, req: Any, client: Any, addr: Any, exc: Exception) -> None:
        """A request gunicorn could not parse: one warning line, the answer in the one JSON shape."""
        refused = refusal(exc)
        if refused is None:  # the server's fault: gunicorn's 500 and traceback (redacted)
            super().handle_error(req, client, addr, exc)
            return
        status, reason, code, message = refused
        ip = addr[0] if isinstance(addr, tuple) and addr else "-"
        # gunicorn's own words, redacted: the refused bytes may hold the token (a request
        # line's ?token=, an Expect header), in the log line and in the answer alike.
        detail = self.redactor.redact(str(exc))
        self.log.warning("Invalid request from ip=%s: %s", ip, detail)
        if isinstance(exc, CHUNK_ERRORS):
            # A body the app read is checked there (CheckedBody: its 400); one seen here is a
            # body the app left unread, found malformed while gunicorn drained it after the
            # answer: a second answer would follow the first. The connection just closes.
            return
        if len(detail) > MAX_DETAIL:
            detail = detail[:MAX_DETAIL] + "…"
        try:
            util.write_nonblock(client, json_answer(status, reason, code, f"{message} ({detail})"))
        except Exception:
            self.log.debug("Failed to send error message.")

    def handle(self, conn: Any) -> Any:
        if not getattr(conn, "kernelserver_patched", False):
            self._patch(conn)
        head = getattr(conn, "pending_head", None)
        if head is not None:
            # The header block read on the event loop goes back in front of the parser.
            conn.pending_head = None
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(head)
        # The whole header block must arrive within one read timeout: a per-read timeout alone
        # lets a client trickle a byte at a time and hold the thread forever, without a token.
        conn.header_deadline = time.monotonic() + self.read_timeout
        return super().handle(conn)

    def handle_request(self, req: Any, conn: Any) -> Any:
        # Headers are in; the body is read under the per-read timeout (only token holders get
        # that far: the token is checked before any body is read).
        conn.header_deadline = None
        conn.sock.settimeout(self.read_timeout)
        return super().handle_request(req, conn)

    def _patch(self, conn: Any) -> None:
        init = conn.init
        timeout = self.read_timeout
        closer = self.closer

        def init_with_timeout() -> None:
            if conn.initialized:
                return  # called again for each request on a kept-alive connection
            init()
            conn.sock.settimeout(timeout)
            unreader = getattr(conn.parser, "unreader", None)
            if unreader is not None and hasattr(unreader, "chunk"):
                chunk = unreader.chunk

                def chunk_before_deadline(*args: Any, **kwargs: Any) -> Any:
                    if conn.header_deadline is None:
                        return chunk(*args, **kwargs)
                    remaining = conn.header_deadline - time.monotonic()
                    try:
                        if remaining <= 0:
                            raise TimeoutError
                        conn.sock.settimeout(min(timeout, remaining))
                        return chunk(*args, **kwargs)
                    except TimeoutError:
                        # Closed quietly, as a client that went away: a traceback per stalled
                        # connection would let anyone fill the server's log.
                        raise NoMoreData() from None

                unreader.chunk = chunk_before_deadline

        def close(graceful: bool = False) -> None:
            if graceful:
                closer.close(conn.sock)
            else:
                close_quietly(conn.sock)

        conn.init = init_with_timeout
        conn.close = close
        conn.kernelserver_patched = True


def worker_class(read_timeout: float) -> type[ReadTimeoutWorker]:
    """A worker class bound to this read timeout (gunicorn takes a class, not an instance)."""
    return type("KernelserverWorker", (ReadTimeoutWorker,), {"read_timeout": read_timeout})


def gunicorn_options(config: dict[str, Any], certfile: str | None, keyfile: str | None) -> dict[str, Any]:
    """The gunicorn settings kernelserver needs: one gthread worker, no worker timeout."""
    host = config["host"]
    bind_host = f"[{host}]" if ":" in host else host
    options: dict[str, Any] = {
        "bind": f"{bind_host}:{config['port']}",
        "workers": 1,  # namespaces live in the worker's memory: exactly one
        "worker_class": worker_class(config["request_read_timeout"]),
        "threads": config["threads"],
        "timeout": 0,  # a long cell is not a hung worker
        "graceful_timeout": 15,
        "keepalive": 75,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": "kernelserver",
    }
    if certfile:
        options["certfile"] = certfile
        options["keyfile"] = keyfile
    return options


def close_service(server: Any, worker: Any) -> None:
    """gunicorn's worker_exit hook: SIGTERM and friends stop every namespace before the exit."""
    app = getattr(worker, "wsgi", None)
    app = getattr(app, "__wrapped__", app)  # the worker wraps the app it loaded
    service = getattr(app, "extensions", {}).get("kernelserver") if app else None
    if service is not None:
        service.close()


def run_gunicorn(config: dict[str, Any], options: dict[str, Any],
                 load: Callable[[], Any] | None = None) -> None:
    """Serve create_app(config) (or what load returns) under gunicorn with these options (blocks)."""
    from gunicorn.app.base import BaseApplication

    from .app import create_app

    class Application(BaseApplication):
        def load_config(self) -> None:
            for key, value in {**options, "worker_exit": close_service}.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return load() if load is not None else create_app(config)

    Application().run()

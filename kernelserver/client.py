"""A thin requests-based client: Client, Namespace, and the server's own exception classes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests

from . import tokenfile
from .errors import ConnectionFailed, KernelServerError, error_class
from .results import Event, ExecutionResult, event_from_dict

DEFAULT_URL = "http://127.0.0.1:5000"
DEFAULT_TIMEOUT = 30.0
# Creating, restarting or deleting a namespace starts or stops a worker process (on a cluster, a
# node's actor), which can take longer than an ordinary request: the default timeout is raised to
# this for them. A timeout the user set is honoured as it is.
SLOW_DEFAULT_TIMEOUT = 60.0
# A stream's reads may be silent up to the server's keepalive interval (10 s by default): a read
# timeout below that would cut quiet cells, so a stream waits this long (or the user's timeout,
# if longer) before calling the connection dead. The request before it (create, get) is what
# notices a hung server quickly.
STREAM_READ_TIMEOUT = 60.0
# Long cells are followed by long-polls of this many seconds each, so no single HTTP request
# waits forever and no proxy idles the connection out.
POLL_SECONDS = 20.0


class Client:
    """A connection to one kernelserver; a context manager over a requests.Session.

    Without a token it uses KERNELSERVER_TOKEN, else the token file in data_dir (default:
    KERNELSERVER_DATA_DIR, else the user data dir) of a server on this machine and this port.
    timeout (else KERNELSERVER_CLIENT_TIMEOUT, else 30 s) bounds each request that is not a
    long-poll or a stream.
    """

    def __init__(self, url: str | None = None, token: str | None = None,
                 timeout: float | None = None, verify: bool | str = True,
                 data_dir: str | None = None) -> None:
        self.url = _checked_url((url or os.environ.get("KERNELSERVER_URL") or DEFAULT_URL).rstrip("/"))
        if token is None:
            token = os.environ.get("KERNELSERVER_TOKEN") or tokenfile.token_for(self.url, data_dir)
        if timeout is None and os.environ.get("KERNELSERVER_CLIENT_TIMEOUT"):
            timeout = _env_timeout(os.environ["KERNELSERVER_CLIENT_TIMEOUT"])
        # Only the default may be raised for slow requests (see SLOW_DEFAULT_TIMEOUT).
        self._timeout_chosen = timeout is not None
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self.session = requests.Session()
        # Passed with each request: requests lets REQUESTS_CA_BUNDLE override session.verify.
        self.verify = verify
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying session."""
        self.session.close()

    @property
    def slow_timeout(self) -> float:
        """The timeout of a request that starts or stops a worker (create, restart, delete)."""
        return self.timeout if self._timeout_chosen else max(self.timeout, SLOW_DEFAULT_TIMEOUT)

    def request(self, method: str, path: str, *, json_body: dict[str, Any] | None = None,
                params: dict[str, Any] | None = None,
                timeout: float | tuple[float, float] | None = None,
                stream: bool = False) -> requests.Response:
        """One HTTP request; API errors raise the matching errors.py class."""
        try:
            response = self.session.request(
                method, self.url + path, json=json_body, params=params,
                timeout=timeout if timeout is not None else self.timeout, stream=stream,
                verify=self.verify,
            )
        except requests.exceptions.Timeout as exc:
            failed = ConnectionFailed(f"no answer from {self.url} in time: {exc}")
            failed.request = exc.request
            raise failed from None
        except requests.exceptions.RequestException as exc:
            hint = ""
            if isinstance(exc, requests.exceptions.ConnectionError) and not isinstance(
                    exc, (requests.exceptions.SSLError, requests.exceptions.ProxyError)):
                hint = " — is it running? start it with `kernelserver serve`"
            failed = ConnectionFailed(f"cannot reach kernelserver at {self.url}: "
                                      f"{type(exc).__name__}{hint}")
            failed.request = exc.request
            raise failed from None
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.request(method, path, **kwargs)
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            error = KernelServerError(f"{self.url}{path} did not answer JSON; is this a "
                                      "kernelserver?")
            error.response, error.request = response, response.request
            raise error from None
        return data

    def health(self) -> dict[str, Any]:
        """GET /health."""
        return self._json("GET", "/health")

    def info(self, kernel: str | None = None) -> dict[str, Any]:
        """GET /info: version, backend, limits, kernels, the environment probe (of that kernel)."""
        return self._json("GET", "/info", params={"kernel": kernel} if kernel else None)

    def kernels(self) -> list[dict[str, Any]]:
        """GET /kernels: every environment a namespace can run in, its Python and whether it starts."""
        return list(self._json("GET", "/kernels", timeout=self.slow_timeout)["kernels"])

    def namespaces(self) -> list[dict[str, Any]]:
        """Every namespace's info."""
        return list(self._json("GET", "/env/list")["envs"])

    def namespace(self, namespace_id: str = "default", create: bool = True, *,
                  num_gpus: float | None = None, num_cpus: float | None = None,
                  memory: int | str | None = None, cull_idle_after: float | None = None,
                  syntax: str | None = None, kernel: str | None = None) -> Namespace:
        """A handle on a namespace, created on the server unless create is False.

        num_gpus and num_cpus place it on a node with them free (ray backend); memory ('16G')
        is its memory limit; cull_idle_after deletes it after that many idle seconds; syntax
        "python" runs plain Python where the server's default is IPython's; kernel names the
        environment it runs in (`kernels()`). A namespace that exists keeps what it was made with."""
        if create:
            body: dict[str, Any] = {"id": namespace_id}
            resources = {k: v for k, v in (("num_gpus", num_gpus), ("num_cpus", num_cpus),
                                           ("memory", memory)) if v is not None}
            if resources:
                body["resources"] = resources
            if cull_idle_after is not None:
                body["cull_idle_after"] = cull_idle_after
            if syntax is not None:
                body["syntax"] = syntax
            if kernel is not None:
                body["kernel"] = kernel
            self._json("POST", "/env/create", json_body=body, timeout=self.slow_timeout)
        return Namespace(self, namespace_id)

    def run(self, code: str, namespace_id: str = "default", **kwargs: Any) -> ExecutionResult:
        """Run code in a namespace (shortcut for namespace(id).run(code))."""
        return Namespace(self, namespace_id).run(code, **kwargs)


def _checked_url(url: str) -> str:
    """The URL, if it is one requests can use; else ConnectionFailed saying how to fix it."""
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if not scheme:
        # requests would say InvalidSchema or MissingSchema: name the fix instead.
        raise ConnectionFailed(f"--url {url!r} has no scheme: add http:// (http://{url})")
    if scheme not in ("http", "https"):
        raise ConnectionFailed(f"--url {url!r}: the scheme must be http:// or https://")
    return url


def _env_timeout(value: str) -> float:
    try:
        timeout = float(value)
    except ValueError:
        timeout = 0.0
    if not timeout > 0:
        raise ValueError(f"KERNELSERVER_CLIENT_TIMEOUT must be a number of seconds above 0, "
                         f"not {value!r}")
    return timeout


def _error_from(response: requests.Response) -> KernelServerError:
    try:
        body = response.json()["error"]
        code, message = str(body["code"]), str(body["message"])
        details = {k: v for k, v in body.items() if k not in ("code", "message")}
    except (ValueError, KeyError, TypeError):
        code, message, details = "", f"HTTP {response.status_code} from {response.url}", {}
    error = error_class(code, response.status_code)(message, **details)
    error.response, error.request = response, response.request
    return error


class Namespace:
    """One namespace on a server: run code, read variables and history, interrupt, delete."""

    def __init__(self, client: Client, namespace_id: str) -> None:
        self.client = client
        self.id = namespace_id

    def __repr__(self) -> str:
        return f"Namespace({self.id!r} on {self.client.url})"

    def run(self, code: str, timeout: float | None = None, wait: float | None = None,
            stream: bool = False, output_cap_bytes: int | None = None,
            repr_limit_bytes: int | None = None) -> Any:
        """Run a cell; the result, or with stream=True an iterator of its events as JSON dicts.

        Without wait, blocks until the cell ends (long cells are long-polled, never cut off).
        With wait, returns after that many seconds at most; a result still running has
        status "running" or "queued": call .wait() on it, or ns.execution(n), later.
        output_cap_bytes and repr_limit_bytes lower the server's limits for this cell.
        """
        body: dict[str, Any] = {"id": self.id, "code": code}
        if timeout is not None:
            body["timeout"] = timeout
        if output_cap_bytes is not None:
            body["output_cap_bytes"] = output_cap_bytes
        if repr_limit_bytes is not None:
            body["repr_limit_bytes"] = repr_limit_bytes
        if stream:
            body["stream"] = True
            return self._events(body)
        body["wait"] = POLL_SECONDS if wait is None else wait
        data = self.client._json("POST", "/execute", json_body=body,
                                 timeout=body["wait"] + self.client.timeout)
        result = ExecutionResult.from_dict(data, source=self)
        if wait is None and not result.finished:
            return self.wait_for(result.execution_count)
        return result

    def stream(self, code: str, timeout: float | None = None, output_cap_bytes: int | None = None,
               repr_limit_bytes: int | None = None) -> Iterator[Event]:
        """Run a cell and yield its typed events as they happen, ending with a ResultEvent.

        OutputEvent (stdout/stderr text), DisplayEvent, and last ResultEvent, whose .result is
        the ExecutionResult. A client that reads more slowly than the cell prints (by 32 MiB) misses
        the output that came meanwhile: a stderr note says how much, where.
        """
        for data in self.run(code, timeout=timeout, stream=True, output_cap_bytes=output_cap_bytes,
                             repr_limit_bytes=repr_limit_bytes):
            yield event_from_dict(data)

    def attach(self, n: int) -> Iterator[Event]:
        """Follow execution n: its output so far, then live, ending with a ResultEvent.

        Leaving early (closing the iterator, Ctrl-C) leaves the cell running.
        """
        params = {"id": self.id, "n": n, "stream": "true"}
        for data in self._events(method="GET", path="/env/execution", params=params):
            yield event_from_dict(data)

    def _events(self, body: dict[str, Any] | None = None, method: str = "POST",
                path: str = "/execute", params: dict[str, Any] | None = None
                ) -> Iterator[dict[str, Any]]:
        read_timeout = max(self.client.timeout, STREAM_READ_TIMEOUT)
        response = self.client.request(method, path, json_body=body, params=params, stream=True,
                                       timeout=(self.client.timeout, read_timeout))
        url = self.client.url
        with response:
            try:
                for line in response.iter_lines(chunk_size=1, decode_unicode=False):
                    if not line:
                        continue
                    event: dict[str, Any] = json.loads(line)
                    if event.get("event") == "keepalive":
                        continue
                    yield event
                    if event.get("event") == "result":
                        return
            except requests.exceptions.RequestException as exc:
                # Only a dead connection or server: the keepalives keep a live one under the
                # read timeout.
                raise ConnectionFailed(f"the stream from {url} broke off: "
                                       f"{type(exc).__name__}") from None

    def execution(self, n: int, wait: float = 0.0) -> ExecutionResult:
        """The state of execution n (waiting up to wait seconds for it to finish)."""
        data = self.client._json("GET", "/env/execution",
                                 params={"id": self.id, "n": n, "wait": wait},
                                 timeout=wait + self.client.timeout)
        return ExecutionResult.from_dict(data, source=self)

    def wait_for(self, n: int, timeout: float | None = None) -> ExecutionResult:
        """Long-poll execution n until it finishes (or timeout seconds pass)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = POLL_SECONDS
            if deadline is not None:
                step = max(0.0, min(step, deadline - time.monotonic()))
            result = self.execution(n, wait=step)
            if result.finished or (deadline is not None and time.monotonic() >= deadline):
                return result

    def info(self) -> dict[str, Any]:
        """POST /env/get: state, counters, pid, memory, variables."""
        return self.client._json("POST", "/env/get", json_body={"id": self.id})

    def variables(self) -> list[dict[str, Any]]:
        """The namespace's variables: name, type, repr (and shape/dtype for arrays)."""
        return list(self.info()["variables"])

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Past executions, oldest first."""
        params: dict[str, Any] = {"id": self.id}
        if limit is not None:
            params["limit"] = limit
        return list(self.client._json("GET", "/env/history", params=params)["executions"])

    def interrupt(self) -> bool:
        """Interrupt the running cell; False if nothing was running."""
        data = self.client._json("POST", "/env/interrupt", json_body={"id": self.id})
        return bool(data["interrupted"])

    def restart(self) -> dict[str, Any]:
        """A fresh, empty namespace under the same id (history is kept)."""
        return self.client._json("POST", "/env/restart", json_body={"id": self.id},
                                 timeout=self.client.slow_timeout)

    def delete(self) -> dict[str, Any]:
        """Delete the namespace; its worker and memory are gone when this returns."""
        return self.client._json("POST", "/env/delete", json_body={"id": self.id},
                                 timeout=self.client.slow_timeout)

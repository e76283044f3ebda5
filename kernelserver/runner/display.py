"""MIME bundles for results and display(): the _repr_*_ protocol IPython defined."""

from __future__ import annotations

import base64
import contextlib
import contextvars
import ctypes
import io
import json
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

# Where display() and matplotlib's show() publish, for the cell running in this context.
current_publisher: contextvars.ContextVar[Callable[[dict[str, Any]], None] | None] = (
    contextvars.ContextVar("kernelserver_publisher", default=None))

# Method name → MIME type, in the order IPython's formatters try them.
REPR_METHODS: tuple[tuple[str, str], ...] = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
)
BINARY_TYPES = frozenset({"image/png", "image/jpeg"})

# What the repr limit cut in the cell running in this context (None outside a cell): the cell's
# result then says truncated, as it does for output dropped past the output cap.
_cuts: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("kernelserver_cuts",
                                                                         default=None)


@contextlib.contextmanager
def recording_cuts() -> Iterator[list[str]]:
    """Collect, into the list yielded, a note of each value the repr limit cuts in this block."""
    cuts: list[str] = []
    token = _cuts.set(cuts)
    try:
        yield cuts
    finally:
        _cuts.reset(token)


def _note_cut(what: str) -> None:
    cuts = _cuts.get()
    if cuts is not None:
        cuts.append(what)


def truncate_text(text: str, limit: int) -> str:
    """Cut text longer than limit characters, with a marker saying how much was dropped."""
    if len(text) <= limit:
        return text
    dropped = len(text) - limit
    _note_cut("text")
    return text[:limit] + f"\n…[kernelserver: {dropped} more characters truncated]"


def bound_bundle(bundle: dict[str, Any], limit: int) -> dict[str, Any]:
    """The bundle with text cut to limit characters and any other value longer than limit dropped.

    Images and JSON cannot be cut and stay valid, so one over the limit is replaced by a note in
    text/plain; the bundle always keeps a text/plain.
    """
    bounded: dict[str, Any] = {}
    notes: list[str] = []
    for mime, value in bundle.items():
        mime = str(mime)
        if isinstance(value, str) and mime not in BINARY_TYPES:
            bounded[mime] = truncate_text(value, limit)
            continue
        try:
            size = len(value) if isinstance(value, str) else len(json.dumps(value))
        except (TypeError, ValueError) as exc:
            notes.append(f"[kernelserver: {mime} dropped: not JSON ({exc})]")
            continue
        if size > limit:
            _note_cut(mime)
            notes.append(f"[kernelserver: {mime} of {size} characters dropped: over the repr "
                         f"limit of {limit}]")
            continue
        bounded[mime] = value
    if notes:
        plain = bounded.get("text/plain")
        bounded["text/plain"] = "\n".join(([plain] if plain else []) + notes)
    return bounded


def _plain_repr(obj: Any) -> str:
    try:
        return repr(obj)
    except BaseException as exc:  # noqa: BLE001 - a user's __repr__ may raise anything
        return f"<{type(obj).__name__} object: repr failed: {type(exc).__name__}: {exc}>"


def safe_repr(obj: Any, limit: int) -> str:
    """repr() that never raises and never returns more than about limit characters."""
    return truncate_text(_plain_repr(obj), limit)


def _warn(message: str) -> None:
    # The backend's capture routes this to the execution's stderr.
    print(message, file=sys.stderr)


def _encode(mime: str, value: Any) -> Any:
    """value in the form it travels in as JSON; bound_bundle applies the limit after."""
    if mime in BINARY_TYPES:
        if isinstance(value, str):
            return value  # already base64, as IPython allows
        if isinstance(value, (bytes, bytearray, memoryview)):
            return base64.b64encode(bytes(value)).decode("ascii")
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    if mime == "application/json":
        json.dumps(value)  # raises TypeError for what cannot travel as JSON
        return value
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {type(value).__name__}")
    return value


def mimebundle(obj: Any, limit: int = 1024 * 1024) -> dict[str, Any]:
    """Every format obj offers, always with text/plain; a failing repr method is reported, not raised."""
    bundle: dict[str, Any] = {}
    type_name = type(obj).__name__
    figure = _figure_png(obj)
    if figure is not None:
        bundle["image/png"] = figure
    method: Callable[..., Any] | None = getattr(obj, "_repr_mimebundle_", None)
    if callable(method) and not isinstance(obj, type):
        try:
            try:
                data = method(include=None, exclude=None)
            except TypeError:
                data = method()
            if isinstance(data, tuple):
                data = data[0]
            for mime, value in (data or {}).items():
                bundle[str(mime)] = _encode(str(mime), value)
        except Exception as exc:
            _warn(f"kernelserver: {type_name}._repr_mimebundle_ failed: {type(exc).__name__}: {exc}")
    for name, mime in REPR_METHODS:
        if mime in bundle or isinstance(obj, type):
            continue
        method = getattr(obj, name, None)
        if not callable(method):
            continue
        try:
            value = method()
            if isinstance(value, tuple):  # (data, metadata) form
                value = value[0]
            if value is not None:
                bundle[mime] = _encode(mime, value)
        except Exception as exc:
            _warn(f"kernelserver: {type_name}.{name} failed: {type(exc).__name__}: {exc}")
    if "text/plain" not in bundle:
        bundle["text/plain"] = _plain_repr(obj)
    return bound_bundle(bundle, limit)


def _figure_png(obj: Any) -> str | None:
    """A matplotlib Figure as base64 PNG, else None (matplotlib is optional)."""
    figure_module = sys.modules.get("matplotlib.figure")
    if figure_module is None or not isinstance(obj, figure_module.Figure):
        return None
    buffer = io.BytesIO()
    obj.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def figures_open() -> bool:
    """True when the cell left matplotlib figures that flush_figures() will publish."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    return pyplot is not None and bool(pyplot.get_fignums())


def flush_figures(limit: int = 1024 * 1024) -> None:
    """Publish every open matplotlib figure as a PNG display, then close them all.

    Figures are closed after each cell, so any figure open now was made or changed by this cell,
    and none repeats in the next one.
    """
    pyplot = sys.modules.get("matplotlib.pyplot")
    publish = current_publisher.get()
    if pyplot is None or publish is None:
        return
    try:
        for number in pyplot.get_fignums():
            try:
                publish(mimebundle(pyplot.figure(number), limit))
            except Exception as exc:
                _warn(f"kernelserver: could not render figure {number}: {type(exc).__name__}: {exc}")
    finally:
        pyplot.close("all")


REPR_SECONDS = 0.5  # the most one variable's repr may take for /env/get


class ReprTimeout(Exception):
    """Raised in a thread whose repr() of a variable ran past its time."""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc else None)


class _Deadline:
    """Raise ReprTimeout in this thread if the block runs past seconds (Python code only: a C
    call that never returns cannot be stopped from inside its process)."""

    def __init__(self, seconds: float) -> None:
        self._thread = threading.get_ident()
        self._lock = threading.Lock()
        self._done = False
        self._fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        with self._lock:
            if not self._done:
                self._fired = True
                _raise_in(self._thread, ReprTimeout)

    def __enter__(self) -> None:
        self._timer.start()

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()
        if self._fired:
            _raise_in(self._thread, None)  # one that fired as the block ended must not land later


def short_repr(value: Any, limit: int, seconds: float = REPR_SECONDS) -> str:
    """A repr of at most about limit characters, made in at most about seconds: a huge string is
    cut before it is repr'd (not copied whole), and a repr that loops is stopped."""
    if isinstance(value, (str, bytes, bytearray)) and len(value) > limit:
        return truncate_text(repr(value[:limit]), limit) + f" ({len(value)} in all)"
    try:
        with _Deadline(seconds):
            text = repr(value)
    except ReprTimeout:
        return f"<{type(value).__name__} object: repr took over {seconds:g} s>"
    except BaseException as exc:  # noqa: BLE001 - a user's __repr__ may raise anything
        return f"<{type(value).__name__} object: repr failed: {type(exc).__name__}: {exc}>"
    return truncate_text(text, limit)


def describe_variable(name: str, value: Any, limit: int = 200,
                      seconds: float = REPR_SECONDS) -> dict[str, Any]:
    """A short, safe description of one namespace variable for /env/get (bounded in size and time)."""
    shown = (short_repr(value, limit, min(seconds, REPR_SECONDS)) if seconds > 0
             else "<repr skipped: the time for this listing's reprs is spent>")
    info: dict[str, Any] = {"name": name, "type": type(value).__name__, "repr": shown}
    for attr in ("shape", "dtype"):
        try:
            found = getattr(value, attr, None)
        except Exception:  # a property may raise
            found = None
        if found is not None and not callable(found) and not isinstance(value, type):
            info[attr] = list(found) if attr == "shape" and isinstance(found, tuple) else str(found)
    return info


def is_user_variable(name: str, value: Any) -> bool:
    """True for names a user would want listed: not dunders, modules or the display builtins."""
    if name.startswith("_"):
        return False
    return not isinstance(value, types.ModuleType)

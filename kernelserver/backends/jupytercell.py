"""One execute_request in a Jupyter kernel: its messages turned into OutputSink calls and an Outcome."""

from __future__ import annotations

import queue
import re
import time
from typing import Any

from jupyter_client.blocking import BlockingKernelClient

from ..results import Cell, ErrorInfo, Outcome
from ..runner.display import bound_bundle
from .base import OutputSink

DRAIN_AFTER_REPLY = 2.0  # the reply is in; the iopub idle that ends the output should follow
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def error_info(content: dict[str, Any]) -> ErrorInfo:
    """ErrorInfo from an error message or reply, the traceback joined and its colours dropped."""
    text = "\n".join(_ANSI.sub("", str(line)) for line in content.get("traceback") or [])
    # bash_kernel names no exception (its evalue is the exit status).
    return ErrorInfo(str(content.get("ename") or "Error"), _ANSI.sub("", str(content.get("evalue", ""))),
                     text + "\n" if text and not text.endswith("\n") else text)



class CellRun:
    """What one execute_request's messages have said so far; output goes on to the sink."""

    def __init__(self, msg_id: str, sink: OutputSink, cell: Cell, limit: int) -> None:
        self.msg_id, self.sink, self.cell, self.limit = msg_id, sink, cell, limit
        self.result: dict[str, Any] | None = None
        self.error: ErrorInfo | None = None
        self.reply: dict[str, Any] | None = None
        self.idle, self.asking, self.replied = False, False, 0.0  # replied: then + DRAIN_AFTER_REPLY
        self.answers: queue.SimpleQueue[str] = queue.SimpleQueue()

    def take(self, msg: dict[str, Any], channel: str, client: BlockingKernelClient) -> None:
        """One message from the kernel: output to the sink, or what ends the cell kept."""
        if msg["parent_header"].get("msg_id") != self.msg_id:
            return  # an earlier cell's, or the readiness check's
        kind, content = msg["msg_type"], msg["content"]
        if channel == "shell" and kind == "execute_reply":
            self.reply, self.replied = content, time.monotonic() + DRAIN_AFTER_REPLY
        elif channel == "stdin" and kind == "input_request" and not self.cell.allow_stdin:
            client.input("")  # a kernel that asks anyway must not hang the cell
        elif channel == "stdin" and kind == "input_request":
            self.asking = True
            self.sink.request_input(str(content.get("prompt", "")), bool(content.get("password")),
                                    self.answers.put)
        elif kind == "stream":
            name = content.get("name")
            (self.sink.write_stderr if name == "stderr" else self.sink.write_stdout)(content["text"])
        elif kind in ("display_data", "update_display_data"):
            self.sink.add_display(bound_bundle(content.get("data", {}), self.limit),
                                  (content.get("transient") or {}).get("display_id"),
                                  kind == "update_display_data")
        elif kind == "clear_output":
            self.sink.clear_output(bool(content.get("wait")))
        elif kind == "execute_result":
            self.result = bound_bundle(content.get("data", {}), self.limit)
        elif kind == "error":
            self.error = error_info(content)
        elif kind == "status" and content.get("execution_state") == "idle":
            self.idle = True

    def outcome(self, interrupted: bool, truncated: bool) -> Outcome:
        """How the cell ended, from its reply and what iopub said."""
        reply = self.reply or {}
        status, error = reply.get("status"), self.error
        if error is None and status == "error":
            error = error_info(reply)  # a kernel that puts its error in the reply alone
        # bash_kernel and IRkernel answer an interrupt with status "abort" and no error message
        # (an interrupt not ours, a kill -INT from a shell, too; we send no stop_on_error).
        if (error is not None and error.ename == "KeyboardInterrupt") or status == "abort" \
                or (interrupted and status != "ok"):
            # Named as our worker names it, whatever the kernel's language calls it (R: an error).
            return Outcome("interrupted", truncated=truncated, error=ErrorInfo(
                "KeyboardInterrupt", error.evalue if error else "", error.traceback if error else ""))
        if error is not None or status != "ok":
            return Outcome("error", error=error or ErrorInfo("KernelError", str(status), ""),
                           truncated=truncated)
        return Outcome("ok", result=self.result, truncated=truncated, user_expressions=reply.get(
            "user_expressions") if self.cell.user_expressions else None)

"""What a live service is waiting on: on SIGUSR1, every asyncio task's await stack, logged (docs/operations.md,
"Troubleshooting").

A stalled consumer or a command that never answers is an ``await`` that does not return. The dump names each
task, what it waits for (``wait_for=<Future ...>`` in its repr) and the chain of awaits that led there, innermost
last, without stopping anything. Tasks with the same stack - thousands of WebSocket handlers - are one entry
with their count, so the one task that differs stands out.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import traceback
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

log = logging.getLogger("openlines.tasks")

SIGNAL = signal.SIGUSR1
NAMES_SHOWN = 10  # task names listed per stack; the count says how many share it


@dataclass
class Stack:
    """Tasks waiting at the same place: the await chain (outermost first), how many, their names and one's repr."""

    text: str
    names: list[str] = field(default_factory=list)
    example: str = ""

    @property
    def count(self) -> int:
        return len(self.names)


def await_frames(task: asyncio.Task[Any]) -> list[FrameType]:
    """The frames of the task's coroutine and of every coroutine it awaits through, outermost first.

    ``Task.get_stack`` gives only the task's own coroutine's frame: a suspended coroutine's callees are
    no ``f_back`` of it, they hang off ``cr_await``. The chain ends at what is not Python code (a future).
    """
    frames: list[FrameType] = []
    step: Any = task.get_coro()
    while step is not None:
        frame = getattr(step, "cr_frame", None) or getattr(step, "gi_frame", None) or getattr(step, "ag_frame", None)
        if frame is None:  # finished, or a C awaitable (a future's iterator)
            break
        frames.append(frame)
        step = getattr(step, "cr_await", None) or getattr(step, "gi_yieldfrom", None) or getattr(step, "ag_await", None)
    return frames


def stack_text(task: asyncio.Task[Any]) -> str:
    """The task's await chain as ``traceback`` prints it, outermost call first, innermost await last."""
    summary = traceback.StackSummary.extract(((f, f.f_lineno) for f in await_frames(task)), lookup_lines=True)
    return "".join(summary.format()).rstrip("\n") or "(no frames: done)"


def stacks(tasks: set[asyncio.Task[Any]]) -> list[Stack]:
    """The tasks grouped by stack, the most shared first."""
    found: dict[str, Stack] = {}
    for task in sorted(tasks, key=lambda t: t.get_name()):
        text = stack_text(task)
        entry = found.setdefault(text, Stack(text))
        if not entry.example:
            entry.example = repr(task)
        entry.names.append(task.get_name())
    return sorted(found.values(), key=lambda s: -s.count)


def dump(loop: asyncio.AbstractEventLoop, reason: str = SIGNAL.name) -> None:
    """Log every task of ``loop`` with its stack: one line for the dump, one per distinct stack.

    Logged as warnings, so a service logging at ``warning`` shows them too.
    """
    tasks = asyncio.all_tasks(loop)
    grouped = stacks(tasks)
    log.warning("asyncio tasks", extra={"tasks": len(tasks), "stacks": len(grouped), "reason": reason})
    for entry in grouped:
        log.warning(
            "asyncio task stack",
            extra={"tasks": entry.count, "names": entry.names[:NAMES_SHOWN], "task": entry.example, "stack": entry.text},
        )


def dump_on_signal(loop: asyncio.AbstractEventLoop) -> None:
    """From now on, SIGUSR1 logs the dump (its default would end the process)."""
    loop.add_signal_handler(SIGNAL, dump, loop)

"""The review's decision log: append-only JSON lines, one log per workspace.

Every decision a reviewer makes is one line in ``<workspace>/decisions/relabel.jsonl``, written and
fsynced before the server answers, so closing the browser, Ctrl-C or a crash loses nothing; a line
torn by a crash mid-write is skipped on reading and the next append starts on a fresh line.

One log per workspace rather than one per flag version: a decision is about an image (by
``image_id``), not about a queue, so re-running ``flag`` (after a dedup, say) keeps what the
reviewer already decided. Each record carries the flag version and the label the reviewer was
shown (``given``), so the log alone says what was decided, on what, and when.

A record::

    {"image_id": "3f2a...", "decision": "relabel", "label": "neutral", "given": "sad",
     "by": "human", "flag_version": "v0003", "time": "2025-01-01T12:00:00.123+00:00"}

Replay (:func:`replay`) gives the current decision per image. Each image has a stack:
``relabel``, ``keep`` and ``remove`` push onto it, ``undo`` pops its top (an undo with nothing to
pop is ignored); the current decision is the top, or none when the stack is empty. So "relabel,
keep, undo" leaves the relabel, and "relabel, undo, undo" leaves no decision.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fercurate.errors import InputError
from fercurate.reports import to_dict

RELABEL, KEEP, REMOVE, UNDO = "relabel", "keep", "remove", "undo"
#: Decisions that stand (undo is not one: it takes one back).
DECISIONS: tuple[str, ...] = (RELABEL, KEEP, REMOVE)
ACTIONS: tuple[str, ...] = (*DECISIONS, UNDO)
BY: tuple[str, ...] = ("human", "model")
LOG_NAME = "relabel.jsonl"


@dataclass(frozen=True)
class Decision:
    """One line of the log."""

    image_id: str
    decision: str
    label: str | None = None
    given: str | None = None
    by: str = "human"
    flag_version: str | None = None
    time: str = ""

    def __post_init__(self) -> None:
        if not self.image_id:
            raise InputError("a decision needs an image_id")
        if self.decision not in ACTIONS:
            raise InputError(f"decision '{self.decision}' is not one of: {', '.join(ACTIONS)}")
        if self.decision == RELABEL and not self.label:
            raise InputError(f"a relabel of image {self.image_id} needs the new label")
        if self.by not in BY:
            raise InputError(f"decided by '{self.by}' is not one of: {', '.join(BY)}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def now() -> str:
    """The current UTC time as ISO 8601 with milliseconds (log timestamps)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def log_path(root: Path | str) -> Path:
    """Where the decision log of the workspace at ``root`` lives."""
    return Path(root) / "decisions" / LOG_NAME


class DecisionLog:
    """An append-only decision log file. Safe to share between threads and processes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, decision: Decision) -> Decision:
        """Write one decision and fsync it before returning; fills in ``time`` when empty."""
        if not decision.time:
            decision = Decision(**{**decision.to_dict(), "time": now()})
        line = json.dumps(decision.to_dict(), separators=(",", ":"), ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # another server or apply on the same workspace
                if _ends_torn(self.path):
                    os.write(fd, b"\n")  # a crash cut the last line: start a fresh one
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)  # also releases the flock
        return decision

    def records(self) -> list[Decision]:
        """Every readable record in file order (torn or foreign lines are skipped)."""
        if not self.path.exists():
            return []
        out = []
        for raw in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                data = json.loads(raw)
                out.append(Decision(**{k: data[k] for k in data if k in Decision.__dataclass_fields__}))
            except (ValueError, TypeError, KeyError, InputError):
                continue
        return out

    def current(self) -> dict[str, Decision]:
        """The standing decision per image (see :func:`replay`)."""
        return replay(self.records())

    def history(self) -> list[str]:
        """Image ids in the order their standing decisions were made, most recent last."""
        return _replay_stacks(self.records())[1]


def _ends_torn(path: Path) -> bool:
    size = path.stat().st_size
    if size == 0:
        return False
    with open(path, "rb") as fh:
        fh.seek(size - 1)
        return fh.read(1) != b"\n"


def _replay_stacks(records: list[Decision]) -> tuple[dict[str, list[Decision]], list[str]]:
    stacks: dict[str, list[Decision]] = {}
    order: list[str] = []  # one entry per standing push, so undo can remove it again
    for rec in records:
        stack = stacks.setdefault(rec.image_id, [])
        if rec.decision == UNDO:
            if stack:
                stack.pop()
                # remove this image's most recent push from the global order
                for i in range(len(order) - 1, -1, -1):
                    if order[i] == rec.image_id:
                        del order[i]
                        break
        else:
            stack.append(rec)
            order.append(rec.image_id)
    return stacks, order


def replay(records: list[Decision]) -> dict[str, Decision]:
    """The standing decision per image: push relabel/keep/remove, pop on undo, take the top."""
    stacks, _ = _replay_stacks(records)
    return {image_id: stack[-1] for image_id, stack in stacks.items() if stack}

"""How library functions report progress without printing: the CLI passes a Rich-backed reporter."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress from long-running library work."""

    def start(self, description: str, total: int | None) -> None:
        """A new phase begins with ``total`` units of work (None when unknown)."""

    def advance(self, n: int = 1) -> None:
        """``n`` more units of the current phase are done."""


class NullProgress:
    """Reports nothing: the default for library calls and tests."""

    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

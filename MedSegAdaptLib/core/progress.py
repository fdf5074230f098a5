"""Progress of long work: the callback type the library reports through, and terminal progress bars."""
from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm

__all__ = ["ProgressCallback", "TerminalProgress"]

ProgressCallback = Callable[[str, int, int], None]
"""progress(stage, done, total); it may raise (for example a Cancelled error) to stop the work."""


class TerminalProgress:
    """A progress(stage, done, total) callback that shows one tqdm bar per stage on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: tqdm | None = None
        self._stage: str | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self._stage:
            self.close()
            self._bar = tqdm(total=total, desc=stage, unit="slice", leave=False, file=sys.stderr)
            self._stage = stage
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None

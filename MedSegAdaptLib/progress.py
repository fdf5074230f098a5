"""Terminal progress bars for long work (tqdm), fed by the library's progress callbacks."""
from __future__ import annotations

import sys

from tqdm import tqdm


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

"""Progress lines: one per run on stderr, with elapsed time and an ETA."""

from __future__ import annotations

import logging
import time

LOGGER = logging.getLogger("bids_parcellate")


def _fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """One line per run on stderr with elapsed time and an ETA for the whole set."""

    def __init__(self, total_runs: int) -> None:
        self.total = total_runs
        self.done = 0
        self.start = time.monotonic()

    def run_done(self, message: str) -> None:
        """Count one more run done and log ``message`` with the elapsed time and ETA."""
        self.done += 1
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        LOGGER.info("[%d/%d runs] %s | elapsed %s, ETA %s", self.done, self.total, message,
                    _fmt_seconds(elapsed), _fmt_seconds(eta))

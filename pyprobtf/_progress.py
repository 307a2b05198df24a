"""A small progress bar (no dependency): redrawn in place on a terminal, a line every 10% otherwise."""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """``bar = ProgressBar(total, "fit RealNVP")``; ``bar.update(step, loss=1.23)``; ``bar.close()``.

    ``fraction`` (optional in ``update``) overrides ``step / total`` as the
    share done, e.g. when a time budget ends the work before ``total``.
    """

    def __init__(self, total: int, desc: str = "", *, enabled: bool = True, file=None, width: int = 24,
                 min_interval: float = 0.2):
        self.total, self.desc, self.enabled = max(int(total), 1), desc, enabled
        self.file = file if file is not None else sys.stderr
        self.width, self.min_interval = width, min_interval
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._last_decile = -1
        self._tty = bool(getattr(self.file, "isatty", lambda: False)())
        self._line = ""

    def _format(self, step: int, fraction: float, postfix: dict) -> str:
        elapsed = time.perf_counter() - self.start
        rate = step / elapsed if elapsed > 0 else 0.0
        remaining = elapsed * (1 - fraction) / fraction if fraction > 0 else 0.0
        filled = int(self.width * min(fraction, 1.0))
        bar = "#" * filled + "-" * (self.width - filled)
        extra = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in postfix.items())
        return (f"{self.desc} {100 * min(fraction, 1.0):3.0f}% [{bar}] {step}/{self.total} "
                f"[{_clock(elapsed)}<{_clock(remaining)}, {rate:.1f} it/s] {extra}").rstrip()

    def update(self, step: int, *, fraction: float | None = None, force: bool = False, **postfix) -> None:
        if not self.enabled:
            return
        fraction = step / self.total if fraction is None else fraction
        now = time.perf_counter()
        if self._tty:
            if force or now - self._last_draw >= self.min_interval:
                line = self._format(step, fraction, postfix)
                self.file.write("\r" + line + " " * max(len(self._line) - len(line), 0))
                self.file.flush()
                self._line, self._last_draw = line, now
        else:
            decile = int(10 * min(fraction, 1.0))
            if force or decile > self._last_decile:
                self._last_decile = decile
                self.file.write(self._format(step, fraction, postfix) + "\n")
                self.file.flush()

    def close(self, step: int | None = None, *, fraction: float | None = None, **postfix) -> None:
        """Draw the final state (when ``step`` is given) and end the line."""
        if not self.enabled:
            return
        if step is not None:
            self.update(step, fraction=fraction, force=True, **postfix)
        if self._tty:
            self.file.write("\n")
            self.file.flush()

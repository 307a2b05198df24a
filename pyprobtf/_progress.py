"""A progress bar with a running-loss postfix, drawn by tqdm."""

from __future__ import annotations

import sys


class ProgressBar:
    """``bar = ProgressBar(total, "fit RealNVP")``; ``bar.update(step, loss=1.23)``; ``bar.close()``.

    ``fraction`` (optional in ``update``) overrides ``step / total`` as the
    share done, e.g. when a time budget ends the work before ``total``: the
    bar's total becomes the projected number of steps, ``step / fraction``.
    tqdm is imported only for an enabled bar.
    """

    def __init__(self, total: int, desc: str = "", *, enabled: bool = True, file=None, width: int = 24,
                 min_interval: float = 0.2):
        self.total, self.desc, self.enabled = max(int(total), 1), desc, enabled
        self._bar = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError as exc:
            raise ImportError("pyprobtf's progress bar needs tqdm, a dependency of pyprobtf: pip install tqdm "
                              "(or pass progress=False)") from exc

        self._bar = tqdm(total=self.total, desc=desc, file=file if file is not None else sys.stderr,
                         mininterval=min_interval, bar_format="{l_bar}{bar:%d}{r_bar}" % width, leave=True,
                         dynamic_ncols=False)

    def update(self, step: int, *, fraction: float | None = None, force: bool = False, **postfix) -> None:
        if self._bar is None:
            return
        if fraction is not None and fraction > 0 and step / self.total < fraction:
            self._bar.total = max(step, round(step / min(fraction, 1.0)))
        self._bar.set_postfix_str(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in postfix.items()), refresh=False)
        self._bar.update(step - self._bar.n)
        if force:
            self._bar.refresh()

    def close(self, step: int | None = None, *, fraction: float | None = None, **postfix) -> None:
        """Draw the final state (when ``step`` is given) and end the line."""
        if self._bar is None:
            return
        if step is not None:
            self.update(step, fraction=fraction, **postfix)
        self._bar.close()  # draws the final state
        self._bar = None

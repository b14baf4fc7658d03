"""Progress of long work, for training and for the samplers: a tqdm bar on a terminal, plain lines in a log.

    progress = Progress(total=4500, desc="train", lines=20, stream=sys.stdout)
    for step in range(4500):
        ...
        progress.advance()                              # the bar moves every step
        if step % 10 == 0:
            progress.report(f"loss {loss:.4f}")         # the bar's postfix; in a log, a line at each 1/20 mark
    progress.close()                                    # in a log, the last line

On a terminal the bar shows the count, the rate and the time left. Off one (a log file, a batch job, output
piped elsewhere) a bar would fill the log with carriage returns, so instead ``report`` prints a line whenever
the work has passed another 1/``lines`` of ``total`` since the last line, and ``close`` prints the last one:

    train: step 900/4500  loss 0.0286  194 img/s  elapsed 2m28s  ETA 9m53s
    train: step 4500/4500  loss 0.0211  199 img/s  elapsed 12m02s
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class Progress:
    """A bar or log lines over ``total`` steps (module docstring). ``enabled=False``: silent.

    ``initial``: steps already done (a resumed run). ``bar=False``: lines even on a terminal. ``lines``: how many
    lines a whole run prints in a log (1: only the last; 0: none). ``stream``: where the lines go (the bar always
    draws on stderr, as tqdm does).
    """

    def __init__(self, total: int, desc: str, *, initial: int = 0, enabled: bool = True, bar: bool = True,
                 lines: int = 10, stream=None, leave: bool = True):
        self.total, self.desc, self.done, self.info = int(total), desc, int(initial), ""
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        on_terminal = enabled and bar and _is_terminal(self.stream) and _is_terminal(sys.stderr)
        self.bar = tqdm(total=self.total, initial=self.done, desc=desc, unit="step", dynamic_ncols=True,
                        smoothing=0.05, leave=leave) if on_terminal else None
        self.every = max(1, -(-self.total // lines)) if enabled and not on_terminal and lines > 0 else 0
        self.next_line = self.done - self.done % self.every + self.every if self.every else None
        self.start_step, self.start = self.done, time.perf_counter()
        self.last_line = None            # the step of the last line printed

    def advance(self, k: int = 1) -> None:
        """k more steps done."""
        self.done += k
        if self.bar is not None:
            self.bar.update(k)

    def report(self, info: str = "") -> None:
        """Where the work stands (e.g. "loss 0.0286  194 img/s"): the bar's postfix, or a line at each mark."""
        self.info = info
        if self.bar is not None:
            self.bar.set_postfix_str(info, refresh=False)
        elif self.every and self.done >= self.next_line and self.done < self.total:
            self._line(final=False)
            self.next_line = self.done - self.done % self.every + self.every

    def update(self, k: int = 1, info: str = "") -> None:
        """advance(k) then report(info): for work whose state is known at every step (the samplers)."""
        self.advance(k)
        self.report(info)

    def close(self, failed: bool = False) -> None:
        """Ends the bar; in a log, prints the last line (unless the work failed, was silent, or it was just printed)."""
        if self.bar is not None:
            self.bar.close()
        elif self.every and not failed and self.done > self.start_step and self.done != self.last_line:
            self._line(final=True)

    def __enter__(self):
        return self

    def __exit__(self, error_type, *_) -> None:
        self.close(failed=error_type is not None)

    def _line(self, final: bool) -> None:
        elapsed = time.perf_counter() - self.start
        parts = [f"{self.desc}: step {self.done}/{self.total}"] + ([self.info] if self.info else [])
        parts.append(f"elapsed {clock(elapsed)}")
        if not final:
            parts.append(f"ETA {clock(elapsed / max(1, self.done - self.start_step) * (self.total - self.done))}")
        print("  ".join(parts), file=self.stream, flush=True)
        self.last_line = self.done


def clock(seconds: float) -> str:
    """3.2 s, 3m05s, 1h02m: a duration for a log line."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False

"""Progress of one engine job on stderr, as `run_job` shows it.

A job reports (fraction, stage) pairs; stages often carry a counter ("ColTran: colouring 3 candidates, row 12/64").
What the user sees:

- each stage by name with its own counter and its own elapsed time, numbered in order of appearance
  ("[2] ColTran: colouring 3 candidates  row 12/64  0:08"), so a long model load is visibly a stage of its own
  and not "0 %" of the job;
- an ETA only once it means something: after MIN_STEPS counter steps of a counted stage (the one that
  dominates a run: sampling rows, tokens, steps), from the overall rate measured since that stage's first step;
  loading and warm-up never enter it (the first ETA of a ColTran run used to say 35 minutes for 3);
- on a terminal, one line redrawn in place (at most 10 times a second) and a finished stage kept as its own
  line; elsewhere (a file, a pipe, CI logs), plain lines: one per stage change and one every PLAIN_INTERVAL
  seconds, never carriage returns.
"""

from __future__ import annotations

import re
import shutil
import threading
import time

MIN_STEPS = 3  # counter steps of a stage before its rate gives an ETA
PLAIN_INTERVAL = 5.0  # s between plain lines within one stage
REDRAW_INTERVAL = 0.1  # s between redraws on a terminal
COUNTER = re.compile(r"^(?P<name>.*?)[,:;]?\s+(?:(?P<unit>[A-Za-z]+)\s+)?(?P<i>\d+)\s*/\s*(?P<n>\d+)\s*$")


def split_stage(stage: str) -> tuple[str, str, int | None, int | None]:
    """'name, row 12/64' -> ('name', 'row', 12, 64); a stage without a counter -> (stage, '', None, None)."""
    match = COUNTER.match(stage.strip())
    if not match:
        return stage.strip(), "", None, None
    return match["name"].strip(), match["unit"] or "", int(match["i"]), int(match["n"])


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class StageProgress:
    def __init__(self, title: str, stream, *, interactive: bool | None = None, now=time.monotonic):
        self.title = title
        self.stream = stream
        isatty = getattr(stream, "isatty", None)
        self.interactive = bool(isatty and isatty()) if interactive is None else interactive
        self.now = now
        self.started = now()
        self.stages: list[str] = []
        self.stage = ""
        self.stage_started = self.started
        self.unit, self.i, self.n = "", None, None
        self.fraction = 0.0
        self.steps = 0  # counter steps seen in this stage
        self.reference: tuple[float, float] | None = None  # (time, fraction) at the stage's first counter step
        self.last_draw = 0.0
        self.last_plain = self.started
        self.shown = True  # the last plain line shows the current state
        self.width = 0
        self._lock = threading.Lock()

    # ---- figures -------------------------------------------------------------------------------------------
    def eta(self) -> float | None:
        """Seconds left, or None while not meaningful."""
        if self.i is None or self.steps < MIN_STEPS or self.reference is None:
            return None
        t0, f0 = self.reference
        elapsed, done = self.now() - t0, self.fraction - f0
        if elapsed <= 0 or done <= 0:
            return None
        return (1.0 - self.fraction) * elapsed / done

    def line(self) -> str:
        now = self.now()
        parts = [f"{self.title}: [{len(self.stages)}] {self.stage or 'starting'}"]
        if self.i is not None:
            parts.append(f"{self.unit + ' ' if self.unit else ''}{self.i}/{self.n}")
        parts.append(f"{clock(now - self.stage_started)}")
        parts.append(f"{self.fraction:.0%} of the job, {clock(now - self.started)} in all")
        eta = self.eta()
        if eta is not None:
            parts.append(f"about {clock(eta)} left")
        return "  ".join(parts)

    # ---- events --------------------------------------------------------------------------------------------
    def update(self, fraction: float, stage: str) -> None:
        with self._lock:
            now = self.now()
            name, unit, i, n = split_stage(stage or self.stage)
            changed = name != self.stage
            if changed:
                if self.stages and self.interactive:
                    self._draw(final=True)  # the finished stage keeps its own line
                self.stages.append(name)
                self.stage, self.stage_started = name, now
                self.steps, self.reference = 0, None
                self.i = None
            if i is not None and i != self.i:
                if self.reference is None:
                    self.reference = (now, float(fraction))
                else:
                    self.steps += 1
            self.unit, self.i, self.n = unit, i, n
            self.fraction = float(fraction)
            self.shown = False
            if self.interactive:
                if changed or now - self.last_draw >= REDRAW_INTERVAL:
                    self._draw()
            elif changed or now - self.last_plain >= PLAIN_INTERVAL:
                self._plain()

    def note(self, text: str) -> None:
        with self._lock:
            self._end_line()
            self.stream.write(f"{self.title}: {text}\n")
            self.stream.flush()

    def close(self, outcome: str = "") -> None:
        with self._lock:
            if self.interactive and self.stages:
                self._draw(final=True)
            elif self.stages and not self.interactive and not self.shown:
                self._plain()
            if outcome:
                self.stream.write(f"{self.title}: {outcome} in {clock(self.now() - self.started)}\n")
            self.stream.flush()

    # ---- output --------------------------------------------------------------------------------------------
    def _plain(self) -> None:
        self.last_plain = self.now()
        self.shown = True
        self.stream.write(self.line() + "\n")
        self.stream.flush()

    def _draw(self, final: bool = False) -> None:
        self.last_draw = self.now()
        columns = shutil.get_terminal_size((100, 20)).columns - 1
        text = self.line()[:columns]
        self.stream.write("\r" + text + " " * max(0, self.width - len(text)) + ("\n" if final else ""))
        self.width = 0 if final else len(text)
        self.stream.flush()

    def _end_line(self) -> None:
        if self.interactive and self.width:
            self.stream.write("\n")
            self.width = 0

"""Events streamed by long-running engine work, and the cancel flag that stops it."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

from engine.errors import CancelledError


@dataclass(frozen=True)
class Progress:
    """`done` of `total` `unit`s of `stage` ("download", "convert", "prefill", "index", ...) are done.

    "prefill" reads a document (its prompt from the start); "question" reads only what follows a cached prefix: a
    question, with the earlier turns the cache does not hold yet."""

    stage: str
    done: int
    total: int
    unit: str = ""
    eta_s: float | None = None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


ProgressCallback = Callable[[Progress], None]


def ignore_progress(_: Progress) -> None:
    """A ProgressCallback that drops everything."""


def run_steps(steps: Generator[Progress, None, object], callback: ProgressCallback = ignore_progress) -> object:
    """Run a generator of Progress events to its end, handing each to callback; returns the generator's value."""
    while True:
        try:
            callback(next(steps))
        except StopIteration as done:
            return done.value


class ProgressPrinter:
    """Progress on a stream (stderr by default): one rewritten line on a terminal, a line per ~10% otherwise."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last: tuple[str, int] = ("", -1)

    def __call__(self, event: Progress) -> None:
        percent = int(100 * event.fraction)
        step = percent if self.tty else percent // 10 * 10
        if (event.stage, step) == self.last:
            return
        self.last = (event.stage, step)
        eta = f", ETA {event.eta_s:.0f} s" if event.eta_s is not None and event.done < event.total else ""
        line = f"{event.stage}: {event.done:,}/{event.total:,} {event.unit} ({percent}%{eta})"
        if self.tty:
            end = "\n" if event.done >= event.total else ""
            self.stream.write(f"\r\033[K{line}{end}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class ProgressMeter:
    """Turns (done, total) updates of one stage into Progress events with an ETA."""

    def __init__(self, stage: str, total: int, callback: ProgressCallback | None, unit: str = "") -> None:
        self.stage, self.total, self.unit = stage, total, unit
        self.callback = callback or ignore_progress
        self.started = time.perf_counter()

    def update(self, done: int) -> Progress:
        """Report `done` units; returns the Progress event it sent."""
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (self.total - done) if 0 < done <= self.total else None
        event = Progress(self.stage, done, self.total, self.unit, eta)
        self.callback(event)
        return event


class CancelToken:
    """A thread-safe flag: the UI thread calls `cancel()`, engine loops call `raise_if_cancelled()`."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def reset(self) -> None:
        self._event.clear()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError()

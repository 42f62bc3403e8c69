"""Helpers shared by test modules (never a conftest: pytest loads those itself)."""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest


def dek_of(blob: bytes) -> bytes:
    """The DEK id of a stored value, sliced by hand: an independent witness of the wire format."""
    return blob[4:20]


class FakeClock:
    """A monotonic clock the test moves by hand (see the ``clock`` fixture in conftest.py)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Hung(BaseException):
    """The watchdog's interruption of a test that did not finish in time."""


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Fail (with every thread's stack on stderr) instead of hanging when the block outlives
    ``seconds``: a deadlocked event loop never reaches ``asyncio.wait_for``'s timeout, so a thread
    interrupts the main thread (blocked in a lock) with a signal whose handler raises."""
    main = threading.get_ident()
    done = threading.Event()
    fired: list[bool] = []

    def interrupt(signum: int, frame: Any) -> None:
        if not done.is_set():  # a signal that arrives after the block is over is ignored
            raise Hung

    def watch() -> None:
        if done.wait(seconds):
            return
        fired.append(True)
        faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
        while not done.is_set():  # until the test lets go, whatever else blocks
            signal.pthread_kill(main, signal.SIGUSR1)
            done.wait(1.0)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    thread = threading.Thread(target=watch, name="vaultkit-test-watchdog", daemon=True)
    thread.start()
    try:
        yield
    except Hung:
        done.set()
    finally:
        done.set()
        thread.join()
        signal.signal(signal.SIGUSR1, previous)
    if fired:
        # Collect the abandoned greenlets now, not inside pytest's report (their teardown
        # switches threads' frames, which the AST compiler of the traceback cannot stand).
        gc.collect()
        pytest.fail(f"hung for more than {seconds}s (deadlock?): stacks dumped on stderr")

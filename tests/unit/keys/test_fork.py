"""keys._fork.PerProcess: one resource per process, made again in a forked child."""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

from vaultkit.keys._fork import PerProcess


def _in_child(resource: PerProcess[list[int]], parent: list[int], out: Any) -> None:
    seen = resource.current()
    made = resource.get()
    out.put((seen is None, made is not parent, made == [os.getpid()], resource.get() is made))


def test_made_once_per_process_and_again_after_fork() -> None:
    """The parent's resource is made once; a forked child sees none of it and makes its own."""
    calls: list[int] = []

    def make() -> list[int]:
        calls.append(os.getpid())
        return [os.getpid()]

    resource = PerProcess(make)
    assert resource.current() is None
    parent = resource.get()
    assert resource.get() is parent and resource.current() is parent and calls == [os.getpid()]
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_in_child, args=(resource, parent, out))
    child.start()
    assert out.get(timeout=60) == (True, True, True, True)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert resource.get() is parent  # the parent's is untouched


def test_a_given_value_and_reset() -> None:
    """A value made by the constructor is used; after reset the next get makes a new one."""
    first, second = object(), object()
    made = iter([second])
    resource = PerProcess(lambda: next(made), value=first)
    assert resource.get() is first
    resource.reset()
    assert resource.current() is None and resource.get() is second
    assert repr(resource) == "PerProcess(...)"

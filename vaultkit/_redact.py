"""Wrappers that keep secrets out of ``repr``, ``str``, logs and pickles."""

from __future__ import annotations

from typing import Generic, NoReturn, TypeVar

T = TypeVar("T")

__all__ = ["NoPickle", "Secret"]


class NoPickle:
    """Mixin for objects that hold key material: they refuse pickling and copying.

    tink-py's ``KeysetHandle`` does the same, so that key bytes cannot leave a process by accident
    through ``pickle``, ``multiprocessing`` or ``copy.deepcopy``.
    """

    __slots__ = ()

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds key material and cannot be pickled or copied")

    def __copy__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds key material and cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds key material and cannot be copied")


class Secret(NoPickle, Generic[T]):
    """A value that must not be shown: ``repr`` and ``str`` print ``Secret('***')``.

    Get the value out with :meth:`reveal`, a deliberate and greppable call.
    """

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        """Return the wrapped value."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        # Comparing two secrets would invite timing leaks and accidental reveals in asserts.
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

"""Driving a generator of commands, synchronously or with ``await``.

Everything in stratacache that talks to a store or an origin is written once, free of
I/O, as a generator: it yields a command whenever it needs something done, receives the
result (or has the failure thrown in), and finally returns its answer. The hierarchy's
flows work this way (see :mod:`stratacache.hierarchy.flow`), and so does every operation
of a tier over a store (see :class:`stratacache.tiers.base.CommandTier`). What differs
between the sync and the async face is only how one command is carried out; this module
holds the rest, once: :class:`Run` follows one generator to its end, and :func:`attempt`
and :func:`aattempt` carry out one command, as an ``(ok, result or exception)`` pair.
A driver is then a three-line loop (httpx drives its auth flows the same way).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, Generic, TypeVar

__all__ = ["Run", "aattempt", "attempt"]

T = TypeVar("T")
Errors = tuple[type[BaseException], ...]


class Run(Generic[T]):
    """One generator being driven: the command it waits for, or, once ``waiting`` is
    False, the ``value`` it returned.

    An exception that escapes the generator and is one of ``errors`` is turned into
    ``escape(exc)`` when given (a tier maps its transport's errors to "level
    unavailable"); anything else propagates unchanged. Used as a context manager, the
    generator is closed however the driving ends, so it can release what it holds."""

    __slots__ = ("_errors", "_escape", "_steps", "command", "value", "waiting")

    def __init__(
        self,
        steps: Generator[Any, Any, T],
        errors: Errors = (Exception,),
        escape: Callable[[BaseException], BaseException] | None = None,
    ) -> None:
        self._steps = steps
        self._errors = errors
        self._escape = escape
        self.waiting = True
        self.command: Any = None
        self.value: Any = None
        self._resume(steps.send, None)

    def settle(self, ok: bool, outcome: Any) -> None:
        """Hand the generator the outcome of its command: a result, or an exception."""
        self._resume(self._steps.send if ok else self._steps.throw, outcome)

    def _resume(self, resume: Callable[[Any], Any], outcome: Any) -> None:
        try:
            self.command = resume(outcome)
        except StopIteration as stop:
            self.waiting = False
            self.value = stop.value
        except self._errors as exc:
            if self._escape is None:
                raise
            raise self._escape(exc) from exc

    def __enter__(self) -> Run[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._steps.close()


def attempt(perform: Callable[[Any], Any], command: Any, errors: Errors) -> tuple[bool, Any]:
    try:
        return True, perform(command)
    except errors as exc:
        return False, exc


async def aattempt(awaitable: Awaitable[Any], errors: Errors) -> tuple[bool, Any]:
    try:
        return True, await awaitable
    except errors as exc:
        return False, exc

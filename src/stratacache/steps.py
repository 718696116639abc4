"""Driving a generator of commands, synchronously or with ``await``.

Everything in stratacache that talks to a store or an origin is written once, free of
I/O, as a generator: it yields a command whenever it needs something done, receives the
result (or has the failure thrown in), and finally returns its answer. The hierarchy's
flows work this way (see :mod:`stratacache.hierarchy.flow`), and so does every operation
of a tier over a store (see :class:`stratacache.tiers.base.CommandTier`). What differs
between the sync and the async face is only how one command is carried out, which the
caller passes in: these two loops are the only place where the two faces are written out
side by side (httpx drives its auth flows the same way).

Whatever ends the driving early (an exception, a cancelled task, KeyboardInterrupt)
closes the generator, so it can release what it holds (single-flight claims).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["adrive", "drive"]

T = TypeVar("T")
Errors = tuple[type[BaseException], ...]


def drive(
    steps: Generator[Any, Any, T],
    perform: Callable[[Any], Any],
    errors: Errors = (),
    escape: Callable[[BaseException], BaseException] | None = None,
) -> T:
    """Run ``steps`` to its end, carrying out each command with ``perform``. One of
    ``errors`` escaping ``steps`` is raised as ``escape(exc)`` (a tier's transport
    failure becomes "level unavailable")."""
    try:
        command = steps.send(None)
        while True:
            try:
                result = perform(command)
            except Exception as exc:
                command = steps.throw(exc)
            else:
                command = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except errors as exc:
        if escape is None:
            raise
        raise escape(exc) from exc
    finally:
        steps.close()


async def adrive(
    steps: Generator[Any, Any, T],
    perform: Callable[[Any], Awaitable[Any]],
    errors: Errors = (),
    escape: Callable[[BaseException], BaseException] | None = None,
) -> T:
    """Run ``steps`` to its end, awaiting ``perform`` for each command; ``errors`` and
    ``escape`` as for :func:`drive`."""
    try:
        command = steps.send(None)
        while True:
            try:
                result = await perform(command)
            except Exception as exc:
                command = steps.throw(exc)
            else:
                command = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except errors as exc:
        if escape is None:
            raise
        raise escape(exc) from exc
    finally:
        steps.close()

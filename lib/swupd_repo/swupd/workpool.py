"""Feeding a process pool without queueing everything at once.

Hashing, fullfile compression and pack compression all submit many jobs; submitting them
all up front would hold every job's arguments in memory. :func:`bounded_map` keeps a fixed
number in flight, which still keeps every worker busy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from typing import Any, TypeVar

Tag = TypeVar("Tag")
Result = TypeVar("Result")


def bounded_map(executor: Executor | None, fn: Callable[..., Result],
                jobs: Iterable[tuple[Tag, tuple[Any, ...]]], limit: int
                ) -> Iterator[tuple[Tag, Result]]:
    """``(tag, fn(*args))`` for each ``(tag, args)`` of ``jobs``, as they finish.

    At most ``limit`` jobs are in flight; ``jobs`` is consumed lazily, so arguments are built
    only when a slot is free. Without an executor the jobs run inline, in order.
    """
    if executor is None:
        for tag, args in jobs:
            yield tag, fn(*args)
        return
    pending: dict[Future[Result], Tag] = {}
    for tag, args in jobs:
        pending[executor.submit(fn, *args)] = tag
        if len(pending) >= limit:
            yield from _finished(pending)
    while pending:
        yield from _finished(pending)


def _finished(pending: dict[Future[Result], Tag]) -> Iterator[tuple[Tag, Result]]:
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    for fut in done:
        yield pending.pop(fut), fut.result()

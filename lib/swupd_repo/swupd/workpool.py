"""Worker processes: how many, fed without queueing everything, dying with their parent.

Hashing, fullfile compression and pack compression all submit many jobs; submitting them
all up front would hold every job's arguments in memory. :func:`bounded_map` keeps a fixed
number in flight, which still keeps every worker busy. :func:`worker_count` is the one rule
for the pool size; :func:`die_with_parent` is how a forked worker follows a killed run.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import threading
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
    try:
        for tag, args in jobs:
            pending[executor.submit(fn, *args)] = tag
            if len(pending) >= limit:
                yield from _finished(pending)
        while pending:
            yield from _finished(pending)
    except BaseException:
        # A failed job (a full disk) or a caller that stops early: let the jobs already
        # running finish before the caller's cleanup runs, or one of them would write its
        # part file into a directory being removed (and the cleanup's own error would hide
        # the real one). Jobs not yet started are cancelled.
        for fut in pending:
            fut.cancel()
        wait(pending)
        raise


def _finished(pending: dict[Future[Result], Tag]) -> Iterator[tuple[Tag, Result]]:
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    for fut in done:
        yield pending.pop(fut), fut.result()


#: Memory one worker may need at once: xz -6 of a pack group or fullfile needs ~100 MiB, plus
#: the member's bytes; bsdiff jobs are budgeted separately (packs.DELTA_MEMORY_BUDGET).
WORKER_MEMORY = 256 * 1024 * 1024


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def available_memory() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def worker_count(jobs: int, cores: int, memory: int | None) -> int:
    """How many worker processes a run starts, by one rule.

    ``jobs`` (0 = as many as cores) is an upper bound, never a demand: every job is CPU-bound,
    so more processes than ``cores`` only add memory and switching; and each worker may need
    :data:`WORKER_MEMORY`, so no more than ``memory`` (available bytes; None = unknown)
    holds. Always at least one.
    """
    wanted = cores if jobs <= 0 else min(jobs, cores)
    if memory is not None:
        wanted = min(wanted, memory // WORKER_MEMORY)
    return max(1, wanted)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this (forked) process when ``parent_pid`` dies.

    A worker blocked on its job queue never notices its parent is gone (the other workers
    hold the queue's write end), so without this a killed run leaves them behind forever.
    If the parent died before the request took effect, exit now. (The kernel signals when
    the *thread* that forked exits: our pools are started from the run's main thread.)
    """
    prctl()(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@functools.cache
def prctl() -> Callable[..., int]:
    """libc's ``prctl``, looked up once in the parent: loading a library in a child forked
    from a threaded process could wait forever on a lock another thread held at the fork."""
    return ctypes.CDLL(None, use_errno=True).prctl


class SharedPool(Executor):
    """One process pool that several producers (threads) feed at once, with admission control.

    Why: the pack phase has independent kinds of work, xz of pack groups and bsdiff of file
    deltas, which used to run one after another, each ending in a single-job tail that left
    the other cores idle. Fed from two threads into one pool, one kind fills the gaps of the
    other, while what runs at once stays bounded: at most ``workers`` jobs are handed to the
    pool (so a new job goes to a free worker, never waits in a queue holding its memory), and
    the declared ``memory`` of the jobs handed over stays within ``budget`` (one job may
    always run, however large). :meth:`submit` blocks the calling thread until both allow.
    """

    def __init__(self, workers: int, budget: int) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.workers = max(1, workers)
        self.budget = budget
        self._pool = ProcessPoolExecutor(max_workers=self.workers)
        # Fork the workers now, from this (the run's main) thread: a forked worker is killed
        # when the *thread* that forked it exits (die_with_parent), and a producer thread
        # that happened to submit first would take the workers with it when it ends.
        self._pool.submit(os.getpid).result()
        self._cond = threading.Condition()
        self._running = 0
        self._memory = 0

    def submit(self, fn: Callable[..., Result], /, *args: Any, memory: int = 0,
               **kwargs: Any) -> Future[Result]:
        with self._cond:
            while self._running >= self.workers or (
                    self._running and self._memory + memory > self.budget):
                self._cond.wait()
            self._running += 1
            self._memory += memory
        try:
            fut = self._pool.submit(fn, *args, **kwargs)
        except BaseException:
            self._release(memory)
            raise
        fut.add_done_callback(lambda _f: self._release(memory))
        return fut

    def _release(self, memory: int) -> None:
        with self._cond:
            self._running -= 1
            self._memory -= memory
            self._cond.notify_all()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)

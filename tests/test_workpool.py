"""The shared process pool of the pack phase (real worker processes, real storage lock)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from swupd_repo.storage import Storage
from swupd_repo.swupd.workpool import SharedPool


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_workers_outlive_the_thread_that_fed_them(tmp_path: Path) -> None:
    """While the storage lock is held, workers die with the *thread* that forked them
    (die_with_parent). A producer thread that submits first and then ends must not take the
    pool's workers with it: they are forked by the thread that makes the pool."""
    with Storage(tmp_path).lock():
        pool = SharedPool(2, budget=0)
        try:
            fed = threading.Thread(target=lambda: pool.submit(os.getpid).result())
            fed.start()
            fed.join()
            time.sleep(0.3)  # the kernel's SIGKILL, if any, has landed
            assert all(pool.submit(os.getpid).result() for _ in range(4))
        finally:
            pool.shutdown()


def _overlap(marks: str, seconds: float) -> int:
    """Mark this job as running, wait, and say how many jobs were running at most."""
    mine = Path(marks) / str(os.getpid())
    mine.touch()
    most = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        most = max(most, len(list(Path(marks).iterdir())))
        time.sleep(0.01)
    mine.unlink()
    return most


def test_memory_budget_keeps_heavy_jobs_apart(tmp_path: Path) -> None:
    """Jobs whose declared memory together passes the budget never run side by side, even
    with free workers and two threads feeding them."""
    pool = SharedPool(2, budget=100)
    try:
        results: list[int] = []

        def feed() -> None:
            results.extend(f.result() for f in [pool.submit(_overlap, str(tmp_path), 0.2,
                                                            memory=80) for _ in range(2)])

        threads = [threading.Thread(target=feed) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [1, 1, 1, 1]
    finally:
        pool.shutdown()


def _write_after(path: str, seconds: float) -> None:
    """A job that is still running when another fails, and writes its output late (as a
    pack compression job writes its part file)."""
    time.sleep(seconds)
    Path(path).write_text("late")


def _fail(message: str) -> None:
    raise OSError(28, message)


def _call(fn: object, args: tuple) -> object:
    """Pool job: ``fn(*args)``."""
    return fn(*args)  # type: ignore[operator]


def test_a_failed_job_lets_running_jobs_finish_before_the_caller_cleans_up(
        tmp_path: Path) -> None:
    """The full-disk run that printed a traceback: a job failed with ENOSPC while another
    was still compressing; write_pack's cleanup removed the parts directory, the running job
    then wrote into it, and the cleanup's 'Directory not empty' replaced the real error.
    bounded_map must not hand the error to the caller before the running jobs are done."""
    from concurrent.futures import ProcessPoolExecutor

    from swupd_repo.swupd.workpool import bounded_map

    late = tmp_path / "late"
    jobs = [("slow", (_write_after, (str(late), 1.0))), ("bad", (_fail, ("disk full",)))]
    with ProcessPoolExecutor(2) as pool:
        try:
            list(bounded_map(pool, _call, jobs, 4))
        except OSError as exc:
            assert "disk full" in str(exc)
            assert late.read_text() == "late"  # finished before the error reached us
        else:
            raise AssertionError("the failed job's error was lost")

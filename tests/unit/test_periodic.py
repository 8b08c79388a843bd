"""periodic.every: a job runs now and every interval, outlives its failures, and runs in one process of
a home at a time (a real flock, taken over when its holder ends)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from securemail.errors import TemporaryFailure
from securemail.periodic import HostLock, every


def test_one_holder_at_a_time_and_the_next_takes_over(tmp_path):
    lock = tmp_path / ".job.lock"
    first, second = HostLock(lock), HostLock(lock)
    assert first.held() and first.held()  # kept once taken
    assert not second.held()
    other = subprocess.run([sys.executable, "-c", "import sys; from securemail.periodic import HostLock; "
                            f"sys.exit(0 if HostLock({str(lock)!r}).held() else 3)"])
    assert other.returncode == 3  # another process of the home does not get it either
    first.release()
    assert second.held()
    second.release()


def test_every_runs_now_and_again_survives_failures_and_stops(tmp_path):
    runs = []

    async def job():
        runs.append(len(runs))
        if len(runs) == 1:
            raise TemporaryFailure("database unavailable")
        if len(runs) == 2:
            raise RuntimeError("a bug")

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(every(0.05, stop, job, what="test job", lock=tmp_path / ".l"))
        while len(runs) < 4:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)
    asyncio.run(main())
    assert runs[:4] == [0, 1, 2, 3]
    assert HostLock(tmp_path / ".l").held()  # released at the stop


def test_every_skips_the_job_while_another_process_holds_the_lock(tmp_path):
    holder, runs = HostLock(tmp_path / ".l"), []
    assert holder.held()

    async def job():
        runs.append(1)

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(every(0.02, stop, job, what="test job", lock=tmp_path / ".l"))
        await asyncio.sleep(0.2)
        assert runs == []
        holder.release()
        while not runs:
            await asyncio.sleep(0.01)
        stop.set()
        await task
    asyncio.run(main())

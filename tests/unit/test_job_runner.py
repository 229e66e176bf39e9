"""workers.job_runner's per-job lock: a live holder keeps a delivery out, a dead one does not."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from workers.job_runner import exclusive

HOLD = """
import fcntl, sys, time
handle = open(sys.argv[1], "a")
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_the_lock_waits_for_a_dying_holder_and_refuses_a_live_one(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "job.lock"
    lock.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with exclusive(lock, wait_s=0.5) as mine:
            assert not mine
        assert time.monotonic() - start >= 0.5
        holder.kill()  # released once the process is gone, while this delivery is still waiting
        with exclusive(lock, wait_s=10) as mine:
            assert mine
    finally:
        holder.kill()
        holder.wait()
    with exclusive(lock, wait_s=0) as mine:  # and released again on leaving the block
        assert mine

"""Keeps the embedded stack running: restarts a component whose process has died.

Started by ``medstack up`` (pid file ``.run/pids/supervisor.pid``), stopped first by
``medstack down``. Restarts reuse the same ports and Redis, so clients and the worker reconnect;
accepted jobs survive (queued ones wait in Redis, running ones are requeued by workers/recovery).
"""

from __future__ import annotations

import logging
import time

from core.settings import settings
from medstack.stack import Stack, StackError

CHECK_EVERY_S = 5.0
log = logging.getLogger("medstack.supervisor")


def _report(line: str) -> None:
    if "already running" not in line:
        log.warning("restarted %s", line)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stack = Stack(settings)
    log.info("watching %s", settings.run_dir)
    while True:
        time.sleep(CHECK_EVERY_S)
        try:
            stack.ensure_running(echo=_report)
        except StackError as error:  # keep watching: the next round may succeed
            log.error("restart failed: %s", error)


if __name__ == "__main__":
    main()

"""The run folder (``.run/`` by default): pid files, logs and the stack's state, one layout.

``medstack up`` writes it; ``status``, ``down``, the supervisor and the tests read it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunFolder:
    root: Path

    def pid_file(self, component: str) -> Path:
        return self.root / "pids" / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"

    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    def prepare(self) -> None:
        for sub in ("pids", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def pid(self, component: str) -> int | None:
        try:
            pid = int(self.pid_file(component).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def save_state(self, state: dict[str, str]) -> None:
        self.state_file.write_text(json.dumps(state, indent=2))

    def load_state(self) -> dict[str, str]:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False

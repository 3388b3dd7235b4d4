"""GET /console (the page) and GET /console/static/{version}/{name} (its script, style sheet and icon).

Every answer carries a strict Content-Security-Policy: scripts, styles and fetches only from this origin, images
from this origin or blob: URLs (the page fetches gallery images with the API key and shows them as blobs), no
inline script, no frames. The static files are a fixed set read once; their URL carries a digest of their
content, so a browser may keep them for a year and still never runs an old script against a new page.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from server.errors import APIError
from server.settings import Settings

HERE = Path(__file__).parent
STATIC_FILES = {"console.js": "text/javascript", "console.css": "text/css", "favicon.svg": "image/svg+xml"}
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "manifest-src 'none'",
        "form-action 'none'",  # the page never submits a form natively: a key can never end up in a URL
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


@dataclass(frozen=True)
class Assets:
    version: str  # digest of every static file: changes whenever one does
    files: dict[str, tuple[bytes, str]]  # name -> (content, media type)


@cache
def assets() -> Assets:
    files = {name: ((HERE / "static" / name).read_bytes(), media) for name, media in STATIC_FILES.items()}
    digest = hashlib.sha256()
    for name, (content, _) in sorted(files.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return Assets(version=digest.hexdigest()[:16], files=files)


def build_router(settings: Settings) -> APIRouter:
    """The console's routes; ``settings`` give the limits the page states (top-k, upload size)."""
    router = APIRouter(tags=["console"], include_in_schema=False)
    templates = Jinja2Templates(directory=HERE / "templates")  # autoescaping on

    @router.get("/console", response_class=HTMLResponse)
    async def console(request: Request) -> HTMLResponse:
        version = assets().version
        context = {
            "static": lambda name: f"/console/static/{version}/{name}",
            "max_top_k": settings.max_top_k,
            "max_upload_bytes": settings.max_upload_bytes,
            "target_far": settings.target_far,
        }
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
        return templates.TemplateResponse(request, "console.html", context, headers=headers)

    @router.get("/console/static/{version}/{name}")
    async def static(version: str, name: str) -> Response:
        found = assets()
        if version != found.version or name not in found.files:
            raise APIError(404, "not_found", "no such console file")
        content, media = found.files[name]
        headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=31536000, immutable"}
        return Response(content, media_type=media, headers=headers)

    return router

"""The dashboard: one HTML page and its static files, served by the api without a key.

The page itself holds no data: it asks for a Helicone key (kept in the tab's sessionStorage) and
calls the api's /v1 routes with it, as any other client would. Only `/` and the files shipped in
`static/` are public (exact paths, listed once here); every other path still needs a key. The page
runs under a Content-Security-Policy that allows only this origin's scripts, styles and fetches.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

PAGE_PATH = "/"
STATIC_PREFIX = "/static/"
INDEX = "index.html"

# No inline script or style, nothing from another origin, no framing, no form posts.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Text files shipped next to the assets (licenses) are served as plain text.
DEFAULT_CONTENT_TYPE = "text/plain; charset=utf-8"


def _content_type(name: str) -> str:
    dot = name.rfind(".")
    return CONTENT_TYPES.get(name[dot:], DEFAULT_CONTENT_TYPE) if dot >= 0 else DEFAULT_CONTENT_TYPE


def load_static() -> dict[str, tuple[bytes, str]]:
    """file name -> (bytes, content type) of every file in the package's static/ folder, read once."""
    folder = resources.files(__package__) / "static"
    return {f.name: (f.read_bytes(), _content_type(f.name)) for f in folder.iterdir() if f.is_file()}


def public_paths(files: dict[str, tuple[bytes, str]]) -> frozenset[str]:
    """The exact paths the guard lets through without a key: the page and each shipped file."""
    return frozenset({PAGE_PATH, *(STATIC_PREFIX + name for name in files if name != INDEX)})


def dashboard_router(files: dict[str, tuple[bytes, str]]) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    page, page_type = files[INDEX]

    # HEAD too: uptime probes ask for the page's headers alone (the server sends no body)
    @router.api_route(PAGE_PATH, methods=["GET", "HEAD"])
    async def index() -> Response:
        return Response(page, media_type=page_type, headers={**SECURITY_HEADERS, "cache-control": "no-cache"})

    @router.api_route(STATIC_PREFIX + "{name}", methods=["GET", "HEAD"])
    async def static(name: str) -> Response:
        found = files.get(name)
        if found is None or name == INDEX:
            raise HTTPException(404, f"no static file {name!r}")
        body, media_type = found
        return Response(body, media_type=media_type, headers={**SECURITY_HEADERS, "cache-control": "no-cache"})

    return router

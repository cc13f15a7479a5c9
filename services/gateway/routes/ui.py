"""The dashboard: its page at `/` and `/ui/...` (one HTML shell; the browser routes), its files at `/ui/assets/`.

The files are plain ES modules and the pinned library files vendored beside them (services/gateway/ui, package
data), so serving them needs no build step. `tests/test_dashboard_assets.py` proves the vendored files are the
npm packages' own.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from litestar import Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

__all__ = ["UI_DIR", "assets", "page"]

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
_INDEX = (UI_DIR / "index.html").read_bytes()
_IMPORT_MAP = re.search(rb'<script type="importmap">(.*?)</script>', _INDEX, re.S)
assert _IMPORT_MAP is not None, "index.html has no import map"

# The import map is the page's only inline script: allowed by its hash, nothing else inline runs.
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_IMPORT_MAP.group(1)).digest()).decode()
HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'self'; script-src 'self' 'sha256-{_SCRIPT_HASH}'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@get(["/", "/ui", "/ui/{path:path}"], include_in_schema=False, name="dashboard")
async def page() -> Response[bytes]:
    return Response(_INDEX, media_type="text/html", headers=HEADERS)


# no-cache: the browser revalidates (ETag) and so never runs files older than the gateway it talks to.
assets = create_static_files_router(
    path="/ui/assets",
    directories=[UI_DIR],
    name="dashboard-assets",
    cache_control=CacheControlHeader(no_cache=True),
)

"""Serving the dashboard's static files: from memory, with ETags.

The files are few and small, so they are read once when the server is built.
Every response revalidates (``no-cache`` plus an ETag) so an upgraded package
shows its new pages at once, and costs a 304 otherwise.
"""

from __future__ import annotations

import hashlib
import mimetypes
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import Response

_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml"}


class Pages:
    """An ASGI application serving the files of one package directory (``index.html`` at ``/``)."""

    def __init__(self, directory: Any) -> None:
        self.files: dict[str, tuple[bytes, str, str]] = {}
        for entry in directory.iterdir():
            if entry.is_file() and not entry.name.startswith("."):
                body = entry.read_bytes()
                suffix = "." + entry.name.rsplit(".", 1)[-1]
                kind = _TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                self.files[entry.name] = (body, kind, '"%s"' % hashlib.sha256(body).hexdigest()[:20])
        if "index.html" not in self.files:
            raise FileNotFoundError(f"the dashboard's index.html is missing from {directory}")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        # the router mounts this under the prefix (``/dashboard`` itself is redirected to ``/dashboard/`` there);
        # files are looked up by name in a dict, so no path reaches the file system
        root = scope.get("root_path", "")
        path = scope["path"][len(root):] if scope["path"].startswith(root) else scope["path"]
        name = path.lstrip("/") or "index.html"
        found = self.files.get(name)
        if scope["method"] not in ("GET", "HEAD"):
            response = Response("Method Not Allowed", 405, headers={"allow": "GET, HEAD"}, media_type="text/plain")
        elif found is None:
            response = Response("Not Found", 404, media_type="text/plain")
        else:
            body, kind, etag = found
            headers = {"etag": etag, "cache-control": "no-cache"}
            if Headers(scope=scope).get("if-none-match") == etag:
                response = Response(status_code=304, headers=headers)
            else:
                response = Response(body if scope["method"] == "GET" else b"", headers=headers, media_type=kind)
                if scope["method"] == "HEAD":
                    response.headers["content-length"] = str(len(body))
        await response(scope, receive, send)


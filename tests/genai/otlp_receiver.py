"""A tiny OTLP/HTTP receiver for the tests: it records every request as it arrived.

Used where a library exports by itself over OTLP/HTTP (the Langfuse SDK sends
protobuf, gzip-compressed by default, to ``<base_url>/api/public/otel/v1/traces``),
so a capture is what the library really sends rather than what an in-memory
exporter would have seen.  Every POST is answered 200 with an empty export
response; ``requests`` keeps the path, the headers and the decompressed body,
and :func:`decode_traces` turns a traces body into OTLP/JSON.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .fake_llm import BackgroundServer
from .otlp_json import hex_ids


def decode_traces(body: bytes, content_type: str = "application/x-protobuf") -> dict[str, Any]:
    """An OTLP traces request body (protobuf, or JSON) as an OTLP/JSON ``ExportTraceServiceRequest`` dict."""
    if content_type.startswith("application/json"):
        return json.loads(body)
    data = MessageToDict(ExportTraceServiceRequest.FromString(body), use_integers_for_enums=True)
    hex_ids(data)
    return data


class OTLPReceiver(BackgroundServer):
    """Records each request (``path``, ``headers``, decompressed ``body``) in ``requests``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        super().__init__(Starlette(routes=[Route("/{path:path}", self._receive, methods=["POST", "GET"])]),
                         "otlp-receiver")

    def traces(self) -> list[dict[str, Any]]:
        """The recorded trace exports, decoded, oldest first."""
        return [decode_traces(r["body"], r["headers"].get("content-type", "")) for r in self.requests
                if r["path"].endswith("/v1/traces")]

    def clear(self) -> None:
        """Forget what was recorded."""
        self.requests.clear()

    async def _receive(self, request: Request) -> Response:
        body = await request.body()
        encoding = request.headers.get("content-encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        self.requests.append({"method": request.method, "path": request.url.path,
                              "headers": dict(request.headers), "body": body})
        if request.url.path.endswith("/v1/traces"):
            return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")
        return Response(b"{}", media_type="application/json")

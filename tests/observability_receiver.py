"""A tiny OTLP/HTTP receiver on 127.0.0.1 for tests: records every POST and decodes trace exports."""

from __future__ import annotations

import gzip
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def _attr_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_attr_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


class Receiver:
    """Collects (path, headers, body) of POSTs; `spans()` decodes the OTLP trace exports."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                enc = self.headers.get("Content-Encoding", "")
                if enc == "gzip":
                    body = gzip.decompress(body)
                elif enc == "deflate":
                    body = zlib.decompress(body)
                with receiver._lock:
                    receiver.requests.append((self.path, dict(self.headers), body))
                if self.path.endswith("/v1/traces"):
                    out, ctype = ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf"
                else:
                    out, ctype = b'{"successes": [], "errors": []}', "application/json"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def spans(self, path_suffix: str = "/v1/traces") -> list[dict[str, Any]]:
        """Every exported span as {name, span_id, parent_span_id, trace_id, status, attributes}."""
        out = []
        with self._lock:
            bodies = [b for p, _, b in self.requests if p.endswith(path_suffix)]
        for body in bodies:
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append(
                            {
                                "name": s.name,
                                "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(),
                                "parent_span_id": s.parent_span_id.hex(),
                                "status": s.status.code,
                                "attributes": {a.key: _attr_value(a.value) for a in s.attributes},
                            }
                        )
        return out

    def paths(self) -> list[str]:
        with self._lock:
            return [p for p, _, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""A bounded record of the requests the mock providers received: method, path, headers, body.

Security tests assert what a provider was never sent (a client-chosen `api_base`, an extra
header, a LiteLLM control argument), and a test of "never sent" must see what was sent: every
request to any mock route is kept here, the newest `limit` of them. `GET /_mock/requests`
reads them (oldest first), `DELETE /_mock/requests` forgets them. A pure ASGI middleware, so
the provider routes stay as they are.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

BODY_LIMIT = 65_536  # bytes of each body kept


class RequestRecorder:
    """ASGI middleware: records each HTTP request (body as JSON when it parses) in a deque."""

    def __init__(self, app: Any, limit: int = 256) -> None:
        self.app = app
        self.recent: deque[dict[str, Any]] = deque(maxlen=limit)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/_mock/requests":
            return await self._own(scope, send)
        entry: dict[str, Any] = {
            "method": scope["method"], "path": scope["path"],
            "query": scope.get("query_string", b"").decode(errors="replace"),
            "headers": {k.decode(errors="replace").lower(): v.decode(errors="replace") for k, v in scope["headers"]},
            "body": None,
        }
        if not entry["path"].startswith("/_mock/") and entry["path"] != "/health":
            self.recent.append(entry)
        chunks: list[bytes] = []

        async def recording_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    raw = b"".join(chunks)[:BODY_LIMIT]
                    try:
                        entry["body"] = json.loads(raw)
                    except ValueError:
                        entry["body"] = raw.decode(errors="replace")
            return message

        await self.app(scope, recording_receive, send)

    async def _own(self, scope: dict, send: Any) -> None:
        if scope["method"] == "DELETE":
            self.recent.clear()
        payload = json.dumps({"requests": list(self.recent)}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

"""One pure ASGI middleware around every request: request id, access log, metrics, audit.

Pure ASGI (not ``BaseHTTPMiddleware``) so uploads and downloads stream through untouched and the
request id context variable is the one the handlers see.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.audit import UNAUDITED, AuditInfo, AuditWriter
from gateway.observability import LATENCY, REQUESTS, new_request_id, request_id_var

access_log = logging.getLogger("gateway.access")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, audit: AuditWriter | None = None) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id(Headers(scope=scope).get("x-request-id"))
        token = request_id_var.set(request_id)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        info = state["audit"] = AuditInfo()
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route_obj = scope.get("route")
            route = getattr(route_obj, "path", None) or "unmatched"
            method = scope["method"]
            REQUESTS.labels(method, route, str(status)).inc()
            LATENCY.labels(method, route).observe(elapsed)
            access_log.info(
                "%s %s %d", method, route, status,
                extra={"method": method, "route": route, "status": status,
                       "duration_ms": round(elapsed * 1000, 2), "api_key_id": info.api_key_id},
            )
            if self.audit is not None and route not in UNAUDITED:
                self.audit.submit(datetime.now(UTC), request_id, method, route, status, elapsed * 1000, info)
            request_id_var.reset(token)

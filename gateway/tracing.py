"""The gateway's spans: one per inference request, one per shadow call (tracing on only).

Imported only when ``tracing`` is not "off" (see runners/tracing.py for the exporters and
the propagation). A request's span (``gateway ModelInfer``, kind SERVER) continues the
client's trace when the client sent ``traceparent``, and carries the model, version, role
and request id once the request is routed; the runner call made under it sends its
context on (``inject``, by ``gateway.supervisor.Runner.infer``), so the runner's span is
its child. A shadow call runs under its own span (``gateway shadow``), a child of the
request whose copy it carries (the first one's, for merged copies).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from gateway.settings import GatewaySettings
from greenroom_client.errors import GreenroomError
from runners.tracing import extract, inject, tracer_provider

__all__ = ["GatewayTracing", "inject"]


class GatewayTracing:
    def __init__(self, settings: GatewaySettings, process: str = "gateway") -> None:
        kind = settings.tracing
        if kind == "off":
            raise ValueError("tracing is off")
        self.provider = tracer_provider(
            kind,
            settings.tracing_file,
            "greenroom-gateway",
            {"greenroom.process": process, "process.pid": str(os.getpid())},
        )
        self.tracer = self.provider.get_tracer("greenroom.gateway")

    @contextlib.contextmanager
    def request(self, metadata: Sequence[tuple[str, Any]] | None) -> Iterator[None]:
        """Around one inference request: the current span while it is answered."""
        with self.tracer.start_as_current_span(
            "gateway ModelInfer",
            context=extract(metadata),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.method": "ModelInfer"},
        ) as span:
            try:
                yield
            except Exception as exc:  # recorded, with the ERROR status, by the span
                code = exc.code if isinstance(exc, GreenroomError) else "INTERNAL"
                span.set_attribute("greenroom.code", code)
                raise
            span.set_attribute("greenroom.code", "OK")

    def routed(self, model: str, version: str, role: str, request_id: str) -> None:
        """The request's model, version, role and id, once it is routed."""
        trace.get_current_span().set_attributes(
            {
                "greenroom.model": model,
                "greenroom.version": version,
                "greenroom.role": role,
                "greenroom.request_id": request_id,
            }
        )

    @contextlib.contextmanager
    def shadow(self, model: str, version: str, request_ids: Sequence[str]) -> Iterator[None]:
        """Around one shadow call (carrying one copy, or several merged)."""
        with self.tracer.start_as_current_span(
            "gateway shadow",
            kind=SpanKind.INTERNAL,
            attributes={
                "greenroom.model": model,
                "greenroom.version": version,
                "greenroom.role": "shadow",
                "greenroom.request_id": request_ids[0] if request_ids else "",
                "greenroom.request_ids": list(request_ids),
            },
        ):
            yield

    def shutdown(self) -> None:
        """Export what is pending (otlp batches) and close the exporter."""
        self.provider.shutdown()

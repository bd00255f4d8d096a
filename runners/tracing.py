"""OpenTelemetry tracing for the gateway and its runners; off unless asked for.

Imported only when tracing is on (``--tracing console|otlp``), so that neither the gateway
nor a runner needs the OpenTelemetry packages (``pip install 'greenroom[tracing]'``)
otherwise. The trace context travels from the gateway to a runner in the standard W3C
``traceparent`` / ``tracestate`` gRPC metadata, so a runner's span of a request is a
child of the gateway's.

Exporters: ``console`` appends every span as one JSON line (``ReadableSpan.to_json``) to a
file, each with one ``write`` on a file opened for appending, so that the gateway and its
runners can share one file; ``otlp`` is OpenTelemetry's OTLP/gRPC exporter, configured by
the standard ``OTEL_EXPORTER_OTLP_*`` variables, in a batch processor.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Kind = Literal["console", "otlp"]
PROPAGATOR = TraceContextTextMapPropagator()
STDERR = 2


class JsonLinesExporter(SpanExporter):
    """Each span as one JSON line, appended to ``path`` (stderr without one)."""

    def __init__(self, path: Path | None) -> None:
        self._own = path is not None
        if path is None:
            self._fd = STDERR
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = "".join(span.to_json(indent=None) + "\n" for span in spans).encode()
        try:
            os.write(self._fd, data)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        if self._own:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._own = False


def tracer_provider(
    kind: Kind, path: Path | None, service: str, attributes: dict[str, str]
) -> TracerProvider:
    """A provider of this process's own (the global one is left alone). OTEL_SERVICE_NAME
    and OTEL_RESOURCE_ATTRIBUTES add to or override ``service`` and ``attributes``."""
    provider = TracerProvider(resource=Resource.create({"service.name": service, **attributes}))
    if kind == "console":
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def extract(metadata: Sequence[tuple[str, Any]] | None) -> Context:
    """The caller's trace context from gRPC metadata (an empty context without one)."""
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    return PROPAGATOR.extract(carrier)


def inject() -> tuple[tuple[str, str], ...]:
    """The current trace context as gRPC metadata (``traceparent``, ``tracestate``)."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return tuple(carrier.items())


class RunnerTracing:
    """A runner's span per ModelInfer call, continuing the caller's trace."""

    def __init__(self, kind: Kind, path: Path | None, name: str, version: str) -> None:
        self.provider = tracer_provider(
            kind, path, "greenroom-runner", {"greenroom.model": name, "greenroom.version": version}
        )
        self.tracer = self.provider.get_tracer("greenroom.runner")
        self.name = name
        self.version = version

    @contextlib.contextmanager
    def infer(self, context: Any, request_id: str) -> Iterator[None]:
        """Around one ModelInfer call; ``context``: its grpc.ServicerContext, for the
        caller's metadata and, at the end, the status the call answers with."""
        attributes = {
            "rpc.system": "grpc",
            "rpc.method": "ModelInfer",
            "greenroom.model": self.name,
            "greenroom.version": self.version,
            "greenroom.request_id": request_id,
        }
        with self.tracer.start_as_current_span(
            "runner ModelInfer",
            context=extract(context.invocation_metadata()),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:
            yield
            code = context.code()
            if code is not None and code.name != "OK":
                details = context.details() or b""
                if isinstance(details, bytes):
                    details = details.decode(errors="replace")
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                span.set_status(StatusCode.ERROR, f"{code.name}: {details}")

    def shutdown(self) -> None:
        self.provider.shutdown()

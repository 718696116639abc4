"""OpenTelemetry spans around what leaves the process: origin loads and remote-level calls.

Through ``opentelemetry-api`` when it is installed (the ``otel`` extra), and only once
the application has set a tracer provider: until then the API would hand out spans that
record nothing, and even those cost a few microseconds per call. Without the package,
or before a provider is set, :func:`span_for` returns None and the caller runs the
operation bare; the L1 hit path never comes here at all.

Span names follow the operation: ``stratacache.origin.load``, ``stratacache.level.get``,
``stratacache.level.write``, ``stratacache.level.delete``, ``stratacache.origin.store``.
Attributes are low-cardinality (``stratacache.level``, ``stratacache.level.kind``) plus
``stratacache.keys``, the number of keys in the call; keys themselves are never put on a
span (they may hold user data).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

__all__ = ["span_for", "tracing_available", "use_tracer_provider"]

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace import ProxyTracerProvider as _Proxy

    _AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only without the otel extra
    _AVAILABLE = False

_TRACER_NAME = "stratacache"
_provider: Any = None  # set by use_tracer_provider; None: the global one


def use_tracer_provider(provider: Any) -> None:
    """Trace stratacache's calls through ``provider`` rather than the global provider
    (``None`` goes back to the global one): for an application that keeps a provider of
    its own, and for tests, since OpenTelemetry sets the global provider only once."""
    global _provider
    _provider = provider


def tracing_available() -> bool:
    """True when opentelemetry-api is installed."""
    return _AVAILABLE


def span_for(name: str, attributes: Mapping[str, Any]) -> AbstractContextManager[Any] | None:
    """A started span named ``name`` (as a context manager that records an exception
    and sets an error status), or None when nothing would record it."""
    if not _AVAILABLE:
        return None
    provider = _provider if _provider is not None else _trace.get_tracer_provider()
    if isinstance(provider, _Proxy):  # no provider set by the application
        return None
    tracer = provider.get_tracer(_TRACER_NAME)
    return tracer.start_as_current_span(
        name,
        kind=_trace.SpanKind.CLIENT,
        attributes=dict(attributes),
        record_exception=True,
        set_status_on_exception=True,
    )

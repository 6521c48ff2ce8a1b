"""Watching a running engine: event sinks, Prometheus metrics, OpenTelemetry spans, a live HTTP page.

This wing sits on top of the core. It may import the core (``engine.core``,
``engine.events``, ``engine.errors`` and the modules they use), the stores
(for a fleet's shared state) and ``engine.reporting`` (status views); the core
never imports it (an import-linter contract in ``pyproject.toml`` says so).
Its optional dependencies, ``prometheus_client`` (extra ``[prometheus]``) and
``opentelemetry-api`` (extra ``[otel]``), are imported only when the feature
that needs them is used, so the engine stays usable without them.
"""

from __future__ import annotations

from engine.observe.server import ObserveServer, serve, serve_metrics

__all__ = ["ObserveServer", "serve", "serve_metrics"]

"""Observability of the running nodes (DESIGN §9): traces, metrics, SIP message logs.

- ``tracing``: one OpenTelemetry trace per call (trace id = hash of the
  Call-ID), W3C trace context in the envelopes, OTLP export from ``OTEL_*``.
- ``metrics``: each node's ``/metrics``, a ``prometheus_client`` collector
  that reads the plain counters and histogram series the hot paths keep;
  ``node_metrics``: the families every node exports (each node's own are
  in ``nodes/edge/metrics.py`` and ``nodes/worker/metrics.py``).
- ``transactions``: transactions, calls and dialogs counted by the observer
  the worker builds its transaction layer with.
- ``etcd``: the etcd clients' observer (latency, errors) and the traced
  location store and lookup the worker passes on when tracing is on.
- ``sip_logging``: whole SIP messages of chosen calls or users, switched on
  through etcd without a restart.
- ``otlp_sink``: a minimal OTLP/HTTP receiver for tests, benchmarks and
  local debugging.

Nothing here is imported by the sans-IO core (``cluster.sip``,
``cluster.sharding``), and nothing here patches another object: observers
and wrappers are passed to the objects they watch when those are built
(``tests/test_architecture.py``).
"""

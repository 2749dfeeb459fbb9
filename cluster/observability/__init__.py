"""Observability of the running nodes (DESIGN §9): traces, metrics, SIP message logs.

- ``tracing``: one OpenTelemetry trace per call (trace id = hash of the
  Call-ID), W3C trace context in the envelopes, OTLP export from ``OTEL_*``.
- ``metrics`` and ``node_metrics``: the OpenTelemetry SDK read by Prometheus
  from each node's ``/metrics``; hot paths only bump plain counters.
- ``transactions``: transactions, calls and dialogs counted from the
  transaction layer's actions.
- ``etcd``: latency, errors and spans of etcd operations.
- ``sip_logging``: whole SIP messages of chosen calls or users, switched on
  through etcd without a restart.
- ``otlp_sink``: a minimal OTLP/HTTP receiver for tests, benchmarks and
  local debugging.

Nothing here is imported by the sans-IO core (``cluster.sip``,
``cluster.sharding``).
"""

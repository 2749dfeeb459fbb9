"""OTLP/HTTP span export: the bytes of ``otlp_encode.encode_spans`` posted to a collector.

A ``SpanExporter`` (the SDK's public extension point for span processors)
of our own, so that nothing depends on the private state of the SDK's
exporter. It speaks OTLP/HTTP with binary protobuf (OTLP specification,
"OTLP/HTTP"): ``POST <endpoint>`` with ``Content-Type:
application/x-protobuf``, optionally gzip-compressed; a 2xx answer is
success; 429, 502, 503 and 504 and failed connections are retried with
exponential backoff (1, 2, 4 … s, or the server's ``Retry-After``) until the
batch's timeout runs out; any other answer, or a certificate that is not
trusted, fails the batch at once.

Configuration, from the standard variables (the ``TRACES_`` form wins):

- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, used as is, or
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` with ``/v1/traces`` appended; default
  ``http://localhost:4318/v1/traces``. ``http`` and ``https`` URLs.
- ``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS``: ``key=value,key2=value2``
  (values percent-decoded).
- ``OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT``: milliseconds per batch, retries
  included (default 10000).
- ``OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION``: ``gzip`` or ``none`` (default).
- ``OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE``: a CA bundle to verify an
  ``https`` collector with (default: the system's trust store).
"""

from __future__ import annotations

import gzip
import http.client
import logging
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from urllib.parse import unquote, urlsplit

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .otlp_encode import encode_spans

__all__ = ["OtlpHttpSpanExporter", "exporter_settings"]

log = logging.getLogger("sipcluster.otlp")

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
DEFAULT_TIMEOUT = 10.0
_RETRYABLE = frozenset((429, 502, 503, 504))
_BACKOFF_START = 1.0
_BACKOFF_CAP = 32.0


def _setting(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}")
    if value is None:
        value = environ.get(f"OTEL_EXPORTER_OTLP_{name}")
    return value.strip() if value is not None else None


def _headers(text: str) -> dict[str, str]:
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            if item.strip():
                log.warning("OTLP header %r is not key=value; left out", item.strip())
            continue
        out[unquote(key.strip())] = unquote(value.strip())
    return out


def exporter_settings(environ: Mapping[str, str]) -> dict:
    """The ``OtlpHttpSpanExporter`` arguments the ``OTEL_EXPORTER_OTLP_*`` variables give."""
    endpoint = _setting(environ, "ENDPOINT") if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") \
        else None
    if endpoint is None:
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        endpoint = base.rstrip("/") + "/v1/traces" if base else DEFAULT_ENDPOINT
    settings: dict = {"endpoint": endpoint}
    headers = _setting(environ, "HEADERS")
    if headers:
        settings["headers"] = _headers(headers)
    timeout = _setting(environ, "TIMEOUT")
    if timeout:
        try:
            settings["timeout"] = float(timeout) / 1000.0
        except ValueError:
            log.warning("OTEL_EXPORTER_OTLP_TIMEOUT=%r is not a number of milliseconds; using %s s",
                        timeout, DEFAULT_TIMEOUT)
    compression = (_setting(environ, "COMPRESSION") or "none").lower()
    if compression not in ("gzip", "none"):
        log.warning("OTLP compression %r is not supported (gzip, none); sending uncompressed", compression)
        compression = "none"
    settings["compression"] = compression
    certificate = _setting(environ, "CERTIFICATE")
    if certificate:
        settings["certificate"] = certificate
    return settings


class OtlpHttpSpanExporter(SpanExporter):
    """Posts each batch as one ``ExportTraceServiceRequest`` (see the module doc)."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, headers: Mapping[str, str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, compression: str = "none",
                 certificate: str | None = None) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OTLP endpoint {endpoint!r} is not an http(s) URL")
        self.endpoint = endpoint
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/x-protobuf", **(headers or {})}
        self._gzip = compression == "gzip"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self.timeout = timeout
        self._context = ssl.create_default_context(cafile=certificate) if self._https else None
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> OtlpHttpSpanExporter:
        return cls(**exporter_settings(environ))

    # -- SpanExporter --------------------------------------------------------------

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._stopped.is_set():
            log.warning("OTLP exporter already shut down; %d spans dropped", len(spans))
            return SpanExportResult.FAILURE
        try:
            body = encode_spans(spans)
        except Exception as error:  # noqa: BLE001 - one bad batch, not the processor's thread
            log.error("OTLP: could not encode %d spans: %s", len(spans), error)
            return SpanExportResult.FAILURE
        if self._gzip:
            body = gzip.compress(body)
        with self._lock:
            return self._deliver(body, len(spans))

    def shutdown(self) -> None:
        self._stopped.set()
        with self._lock:
            self._close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # nothing is buffered here: export posts before it returns

    # -- posting -----------------------------------------------------------------------

    def _deliver(self, body: bytes, count: int) -> SpanExportResult:
        deadline = time.monotonic() + self.timeout
        backoff = _BACKOFF_START
        status, detail = None, "timed out"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                status, retry_after, detail = self._post(body, remaining)
            except ssl.SSLCertVerificationError as error:
                # Retrying will not make the collector's certificate trusted.
                self._close()
                log.warning("OTLP collector %s is not trusted (%s; OTEL_EXPORTER_OTLP_CERTIFICATE names "
                            "the CA); %d spans dropped", self.endpoint, error.verify_message, count)
                return SpanExportResult.FAILURE
            except (OSError, http.client.HTTPException) as error:
                self._close()
                status, retry_after, detail = None, None, str(error) or type(error).__name__
            if status is not None and 200 <= status < 300:
                return SpanExportResult.SUCCESS
            if status is not None and status not in _RETRYABLE:
                log.warning("OTLP collector %s refused %d spans: %s %s", self.endpoint, count, status, detail)
                return SpanExportResult.FAILURE
            wait = retry_after if retry_after is not None else backoff
            if time.monotonic() + wait >= deadline or self._stopped.wait(wait):
                break
            backoff = min(backoff * 2, _BACKOFF_CAP)
        log.warning("OTLP collector %s unreachable, %d spans dropped: %s", self.endpoint, count,
                    detail if status is None else f"{status} {detail}")
        return SpanExportResult.FAILURE

    def _post(self, body: bytes, timeout: float) -> tuple[int, float | None, str]:
        connection = self._connection
        if connection is not None and connection.sock is not None:
            connection.sock.settimeout(timeout)  # kept alive: this attempt's share of the deadline
        else:
            self._close()
            if self._https:
                connection = http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                                         context=self._context)
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._connection = connection
        connection.request("POST", self._path, body=body, headers=self._headers)
        response = connection.getresponse()
        detail = response.read(512).decode("utf-8", "replace")
        response.read()
        if response.will_close:
            self._close()
        return response.status, _retry_after(response.getheader("Retry-After")), detail

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (RFC 9110 §10.2.3); the HTTP-date form is ignored."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())

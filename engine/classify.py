"""Map exceptions raised by a model client to the policy's error classes.

:func:`classify` is the default classifier of ``PolicyEngine.call``. It
understands the common shapes without importing any SDK:

* an HTTP status on the exception: ``status_code``, ``status``, ``http_status``
  or ``response.status_code`` — 429 → ``rate_limit``, 408 → ``timeout``,
  401/403 → ``auth``, 413 → ``context_window``, other 4xx → ``bad_request``,
  5xx → ``server_error`` (529 → ``overloaded`` when the policy defines it);
* timeouts: ``TimeoutError`` (``asyncio.TimeoutError`` too) and any class
  whose name contains ``Timeout`` → ``timeout``;
* connection failures: ``ConnectionError`` and classes named ``*Connection*``
  → ``connection``;
* names and messages that say so: ``RateLimit`` → ``rate_limit``,
  ``context length``/``context_length_exceeded``/``maximum context`` →
  ``context_window``, ``content_policy``/``content filter``/``safety`` →
  ``content_policy``, ``Authentication``/``PermissionDenied`` → ``auth``;
* anything else → ``server_error``.

A retry-after hint is read from ``retry_after`` or the ``Retry-After``
header of ``response.headers``. Pass your own ``classifier`` to ``call`` to
replace it: a callable ``(exception) -> (error_class, retry_after_s)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Classifier = Callable[[BaseException], tuple[str, float | None]]


def _status(exc: BaseException) -> int | None:
    for obj in (exc, getattr(exc, "response", None)):
        for attr in ("status_code", "status", "http_status"):
            value = getattr(obj, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                return value
    return None


def retry_after(exc: BaseException) -> float | None:
    value: Any = getattr(exc, "retry_after", None)
    if value is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
        if headers is not None and hasattr(headers, "get"):
            value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return seconds if seconds is not None and 0 <= seconds < 86_400 else None


def _by_status(status: int) -> str:
    if status == 429:
        return "rate_limit"
    if status == 408:
        return "timeout"
    if status in (401, 403):
        return "auth"
    if status == 413:
        return "context_window"
    if status == 529:
        return "overloaded"
    return "bad_request" if status < 500 else "server_error"


_WORDS = (
    (("ratelimit", "rate_limit", "rate limit", "too many requests"), "rate_limit"),
    (("context_length", "context length", "maximum context", "context window", "too many tokens"),
     "context_window"),
    (("content_policy", "content policy", "content filter", "contentfilter", "safety"), "content_policy"),
    (("authentication", "permissiondenied", "unauthorized", "invalid api key"), "auth"),
    (("timeout", "timed out"), "timeout"),
    (("connection", "connect"), "connection"),
)


def classify(exc: BaseException) -> tuple[str, float | None]:
    """The error class of ``exc`` and its retry-after hint (seconds) if any."""
    status = _status(exc)
    if status is not None:
        return _by_status(status), retry_after(exc)
    if isinstance(exc, TimeoutError):
        return "timeout", None
    if isinstance(exc, ConnectionError):
        return "connection", None
    text = f"{type(exc).__name__} {exc}".lower()
    for words, name in _WORDS:
        if any(w in text for w in words):
            return name, retry_after(exc)
    return "server_error", retry_after(exc)

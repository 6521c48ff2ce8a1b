"""Map exceptions raised by a model client to the policy's error classes.

:func:`classify` is the default classifier of ``PolicyEngine.call``. It
understands the common shapes without importing any SDK:

* an HTTP status on the exception: ``status_code``, ``status``, ``http_status``,
  ``code`` (google-genai) or ``response.status_code`` — a 400 or 413 whose
  message says the context is too long → ``context_window`` (OpenAI's
  ``context_length_exceeded``, Anthropic's "prompt is too long"), otherwise
  429 → ``rate_limit``, 408 → ``timeout``,
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

A retry-after hint is read from ``retry_after`` or the headers of
``response.headers`` (any casing): ``retry-after-ms`` (OpenAI), then
``Retry-After`` as seconds or as an HTTP date. The ``match`` rules of ``errors.yaml`` (:func:`match_error`) are checked
before the classifier. Pass your own ``classifier`` to ``call`` to
replace it: a callable ``(exception) -> (error_class, retry_after_s)``.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from engine.policy.model import ErrorMatch

Classifier = Callable[[BaseException], tuple[str, float | None]]


def _status(exc: BaseException) -> int | None:
    for obj in (exc, getattr(exc, "response", None)):
        for attr in ("status_code", "status", "http_status", "code"):
            value = getattr(obj, attr, None)
            # an error status only: Anthropic reports an error inside a 200 stream with status_code 200
            if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
                return value
    return None


def _header(headers: Any, name: str) -> Any:
    """A header's value from any mapping-like object, whatever the key's casing."""
    try:
        value = headers.get(name)
        if value is not None:
            return value
        for key in headers:
            if isinstance(key, str) and key.lower() == name:
                return headers[key]
    except Exception:  # an odd headers object: no hint rather than a crash
        return None
    return None


def _seconds(value: Any, scale: float = 1.0) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value) * scale
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        if not isinstance(value, str):
            return None
        try:  # Retry-After may be an HTTP date (RFC 9110 10.2.3)
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = max(0.0, when.timestamp() - time.time())
    return seconds if math.isfinite(seconds) and 0 <= seconds < 86_400 else None


def retry_after(exc: BaseException) -> float | None:
    """The retry-after hint of ``exc`` in seconds, or ``None``."""
    hint = _seconds(getattr(exc, "retry_after", None))
    if hint is not None:
        return hint
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None or not hasattr(headers, "get"):
        return None
    hint = _seconds(_header(headers, "retry-after-ms"), 0.001)
    return hint if hint is not None else _seconds(_header(headers, "retry-after"))


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


_CONTEXT_WORDS = ("context_length", "context length", "maximum context", "context window",
                  "too many tokens", "prompt is too long")
_WORDS = (
    (("ratelimit", "rate_limit", "rate limit", "too many requests"), "rate_limit"),
    (_CONTEXT_WORDS, "context_window"),
    (("content_policy", "content policy", "content filter", "contentfilter", "safety"), "content_policy"),
    (("authentication", "permissiondenied", "unauthorized", "invalid api key"), "auth"),
    (("timeout", "timed out"), "timeout"),
    (("connection", "connect"), "connection"),
)


def classify(exc: BaseException) -> tuple[str, float | None]:
    """The error class of ``exc`` and its retry-after hint (seconds) if any."""
    status = _status(exc)
    if status is not None:
        if status in (400, 413) and any(w in str(exc).lower() for w in _CONTEXT_WORDS):
            return "context_window", None
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


def _codes_in(obj: Any, out: set[str]) -> None:
    for attr in ("code", "type", "error_code"):
        value = obj.get(attr) if isinstance(obj, Mapping) else getattr(obj, attr, None)
        if isinstance(value, str) and value:
            out.add(value.lower())


def error_fields(exc: BaseException) -> tuple[int | None, frozenset[str], str]:
    """``(status, codes, message)`` of a provider error, whatever SDK raised it.

    Codes and types come from the exception (``code``, ``type``, ``error_code``:
    OpenAI's ``insufficient_quota``, Anthropic's ``not_found_error``) and from its
    JSON ``body`` (``{"error": {"code": ..., "type": ...}}`` or the error object
    itself); the message joins ``str(exc)`` and the body's ``message``, lower-cased.
    """
    codes: set[str] = set()
    _codes_in(exc, codes)
    texts = [str(exc)]
    body = getattr(exc, "body", None)
    for obj in (body, body.get("error") if isinstance(body, Mapping) else None):
        if isinstance(obj, Mapping):
            _codes_in(obj, codes)
            if isinstance(obj.get("message"), str):
                texts.append(obj["message"])
    return _status(exc), frozenset(codes), " ".join(texts).lower()


def match_error(rules: Iterable[ErrorMatch], exc: BaseException) -> str | None:
    """The error class of the first rule ``exc`` satisfies (every condition the rule gives), or ``None``."""
    fields: tuple[int | None, frozenset[str], str] | None = None
    for rule in rules:
        if fields is None:
            fields = error_fields(exc)
        status, codes, text = fields
        if rule.status and status not in rule.status:
            continue
        if rule.code and not any(c.lower() in codes for c in rule.code):
            continue
        if rule.message and not any(m in text for m in rule.message):
            continue
        return rule.error_class
    return None

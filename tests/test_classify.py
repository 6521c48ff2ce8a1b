from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from engine.classify import classify, retry_after


class ProviderError(Exception):
    """An SDK-style exception: attributes set from keyword arguments."""

    def __init__(self, message: str = "provider error", **attrs: Any) -> None:
        super().__init__(message)
        for name, value in attrs.items():
            setattr(self, name, value)


class Headers(Mapping[str, str]):
    """Case-insensitive headers, as httpx.Headers and requests' CaseInsensitiveDict are."""

    def __init__(self, items: dict[str, str]) -> None:
        self._items = {k.lower(): v for k, v in items.items()}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def response(status: int, headers: Any = None) -> SimpleNamespace:
    return SimpleNamespace(status_code=status, headers=headers if headers is not None else {})


STATUSES = [
    (429, "rate_limit"), (408, "timeout"), (401, "auth"), (403, "auth"), (413, "context_window"),
    (400, "bad_request"), (404, "bad_request"), (422, "bad_request"),
    (500, "server_error"), (502, "server_error"), (503, "server_error"), (529, "overloaded"),
]


# -- HTTP status --------------------------------------------------------------------
@pytest.mark.parametrize(("status", "cls"), STATUSES)
def test_status_code_attribute(status: int, cls: str) -> None:
    assert classify(ProviderError(status_code=status)) == (cls, None)


@pytest.mark.parametrize(("status", "cls"), STATUSES)
def test_response_status_code(status: int, cls: str) -> None:
    assert classify(ProviderError(response=response(status))) == (cls, None)


@pytest.mark.parametrize("attr", ["status", "http_status"])
def test_other_status_attribute_names(attr: str) -> None:
    assert classify(ProviderError(**{attr: 429})) == ("rate_limit", None)


@pytest.mark.parametrize("value", [True, 999, 42, "429", None])
def test_a_status_that_is_no_http_status_is_ignored(value: Any) -> None:
    assert classify(ProviderError("boom", status_code=value)) == ("server_error", None)


def test_status_wins_over_the_class_name() -> None:
    class RateLimitError(Exception):
        status_code = 503

    assert classify(RateLimitError()) == ("server_error", None)


# -- retry-after ----------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    (7, 7.0), (2.5, 2.5), ("12", 12.0), (0, 0.0), ("0", 0.0),
    (-1, None), (float("nan"), None), (float("inf"), None), (86_400, None), ("soon", None),
    (10**400, None), ("1" + "0" * 400, None),  # too large for a float: no hint, not an OverflowError
])
def test_retry_after_attribute(value: Any, expected: float | None) -> None:
    assert classify(ProviderError(status_code=429, retry_after=value)) == ("rate_limit", expected)


@pytest.mark.parametrize("headers", [
    {"retry-after": "5"},
    {"Retry-After": "5"},
    Headers({"Retry-After": "5"}),
    Headers({"RETRY-AFTER": "5"}),
])
def test_retry_after_header(headers: Any) -> None:
    assert classify(ProviderError(response=response(429, headers))) == ("rate_limit", 5.0)


def test_the_attribute_wins_over_the_header() -> None:
    exc = ProviderError(retry_after=2, response=response(429, {"retry-after": "9"}))
    assert retry_after(exc) == 2.0


def test_no_hint_without_attribute_or_header() -> None:
    assert retry_after(ProviderError(response=SimpleNamespace(status_code=429))) is None
    assert retry_after(ProviderError(response=response(429, ["retry-after", "5"]))) is None


def test_a_hint_is_read_for_name_classified_errors_too() -> None:
    class RateLimitError(Exception):
        retry_after = 4

    assert classify(RateLimitError("slow down")) == ("rate_limit", 4.0)


def test_retry_after_header_in_a_plain_dict_with_other_casing() -> None:
    assert retry_after(ProviderError(response=response(429, {"RETRY-AFTER": "5"}))) == 5.0


def test_retry_after_header_of_int_zero() -> None:
    assert retry_after(ProviderError(response=response(429, {"retry-after": 0}))) == 0.0


def test_retry_after_http_date() -> None:
    exc = ProviderError(response=response(429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert retry_after(exc) is not None


# -- exception types and names -----------------------------------------------------------
@pytest.mark.parametrize(("exc", "cls"), [
    (TimeoutError(), "timeout"),
    (asyncio.TimeoutError(), "timeout"),  # noqa: UP041 - an alias since 3.11, kept on purpose
    (ConnectionError(), "connection"),
    (ConnectionRefusedError(), "connection"),
    (ConnectionResetError(), "connection"),
])
def test_builtin_timeouts_and_connection_errors(exc: Exception, cls: str) -> None:
    assert classify(exc) == (cls, None)


def _named(name: str, base: type[Exception] = Exception) -> type[Exception]:
    return type(name, (base,), {})


@pytest.mark.parametrize(("name", "cls"), [
    ("RateLimitError", "rate_limit"),
    ("APITimeoutError", "timeout"),
    ("ReadTimeout", "timeout"),
    ("APIConnectionError", "connection"),
    ("ConnectError", "connection"),
    ("AuthenticationError", "auth"),
    ("PermissionDeniedError", "auth"),
    ("ContentFilterError", "content_policy"),
    ("InternalServerError", "server_error"),
])
def test_class_names(name: str, cls: str) -> None:
    assert classify(_named(name)("something went wrong")) == (cls, None)


def test_openai_api_timeout_error_subclassing_api_connection_error_is_a_timeout() -> None:
    connection = _named("APIConnectionError")
    assert classify(_named("APITimeoutError", connection)("Request timed out.")) == ("timeout", None)


@pytest.mark.parametrize(("message", "cls"), [
    ("This model's maximum context length is 8192 tokens", "context_window"),
    ("error code: context_length_exceeded", "context_window"),
    ("input exceeds the context window", "context_window"),
    ("Too Many Requests", "rate_limit"),
    ("blocked by the content filter", "content_policy"),
    ("Invalid API key provided", "auth"),
    ("the read timed out", "timeout"),
])
def test_messages(message: str, cls: str) -> None:
    assert classify(RuntimeError(message)) == (cls, None)


@pytest.mark.parametrize("exc", [ValueError("boom"), RuntimeError(), KeyError("x"), Exception()])
def test_unknown_is_server_error(exc: Exception) -> None:
    assert classify(exc) == ("server_error", None)


def test_openai_context_length_400_is_a_context_window_error() -> None:
    exc = ProviderError("Error code: 400 - This model's maximum context length is 128000 tokens "
                        "(context_length_exceeded)", status_code=400)
    assert classify(exc)[0] == "context_window"


def test_anthropic_prompt_too_long_is_a_context_window_error() -> None:
    exc = ProviderError("prompt is too long: 210000 tokens > 200000 maximum", status_code=400)
    assert classify(exc)[0] == "context_window"


def test_gemini_code_attribute_is_read_as_the_status() -> None:
    exc = ProviderError("429 RESOURCE_EXHAUSTED", code=429, status="RESOURCE_EXHAUSTED")
    assert classify(exc)[0] == "rate_limit"

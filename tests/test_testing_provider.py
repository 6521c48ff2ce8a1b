"""engine.testing.FakeProvider with the real SDKs, and the error class each provider failure maps to."""

from __future__ import annotations

from typing import Any

import pytest

from engine import load_policies
from engine.classify import classify, match_error
from engine.testing import FakeProvider
from tests.conftest import POLICIES

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
POLICY = load_policies(POLICIES)
MSG = [{"role": "user", "content": "say hello to me"}]


def error_class(exc: BaseException) -> str:
    return match_error(POLICY.error_matches, exc) or classify(exc)[0]


OPEN: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Any:
    yield
    while OPEN:
        OPEN.pop().close()  # their connection pools: no unclosed sockets left to the garbage collector


def oai(fp: FakeProvider, **kw: Any) -> Any:
    OPEN.append(openai.OpenAI(base_url=fp.openai_url, api_key="test", max_retries=0, **kw))
    return OPEN[-1]


def ant(fp: FakeProvider, **kw: Any) -> Any:
    OPEN.append(anthropic.Anthropic(base_url=fp.anthropic_url, api_key="test", max_retries=0, **kw))
    return OPEN[-1]


def test_openai_chat_json_and_stream_with_usage(provider: FakeProvider) -> None:
    provider.reply("m", "one two three", cached_tokens=1)
    r = oai(provider).chat.completions.create(model="m", messages=MSG)
    assert r.choices[0].message.content == "one two three"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.prompt_tokens_details.cached_tokens) == (4, 3, 1)
    chunks = list(oai(provider).chat.completions.create(model="m", messages=MSG, stream=True,
                                                        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    assert chunks[-1].usage.completion_tokens == 3 and chunks[-1].choices == []
    assert [(r.api, r.model, r.stream) for r in provider.calls()] == [("openai", "m", False), ("openai", "m", True)]


def test_anthropic_messages_json_and_stream(provider: FakeProvider) -> None:
    provider.reply("c", "hi there")
    m = ant(provider).messages.create(model="c", max_tokens=9, messages=MSG)
    assert m.content[0].text == "hi there" and (m.usage.input_tokens, m.usage.output_tokens) == (4, 2)
    events = list(ant(provider).messages.create(model="c", max_tokens=9, messages=MSG, stream=True))
    assert [e.type for e in events] == ["message_start", "content_block_start", "content_block_delta",
                                        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert events[0].message.usage.input_tokens == 4 and events[-2].usage.output_tokens == 2


def test_a_prefilled_request_gets_the_rest_of_the_reply(provider: FakeProvider) -> None:
    provider.reply("m", "one two three four")
    messages = [*MSG, {"role": "assistant", "content": "one two"}]
    r = oai(provider).chat.completions.create(model="m", messages=messages)
    assert r.choices[0].message.content == " three four"


# (fault, the SDK exception, the engine's error class) — the table in the README
FAULTS = [
    ((429, {"retry_after": 1}), "RateLimitError", "rate_limit"),
    ((500, {}), "InternalServerError", "server_error"),
    ((503, {}), "InternalServerError", "server_error"),
    (("context_length", {}), "BadRequestError", "context_window"),
    (("not_found", {}), "NotFoundError", "model_not_found"),
    (("insufficient_quota", {}), "RateLimitError", "quota_exhausted"),
    (("credit", {}), "BadRequestError", "quota_exhausted"),
    (("hang", {"hang_s": 5}), "APITimeoutError", "timeout"),
]


@pytest.mark.parametrize(("fault", "sdk_error", "cls"), FAULTS, ids=[str(f[0][0]) for f in FAULTS])
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_each_fault_is_the_sdk_exception_and_error_class(provider: FakeProvider, sdk: str, fault: Any,
                                                          sdk_error: str, cls: str) -> None:
    kind, kw = fault
    provider.fail("m", kind, **kw)
    mod = openai if sdk == "openai" else anthropic
    with pytest.raises(mod.APIError) as info:
        if sdk == "openai":
            oai(provider, timeout=0.3).chat.completions.create(model="m", messages=MSG)
        else:
            ant(provider, timeout=0.3).messages.create(model="m", max_tokens=9, messages=MSG)
    assert sdk_error in [c.__name__ for c in type(info.value).__mro__]  # Anthropic's 503: ServiceUnavailableError
    assert error_class(info.value) == cls
    if kind == 429:
        assert classify(info.value)[1] == 1.0  # Retry-After


def test_529_is_overloaded_from_anthropic(provider: FakeProvider) -> None:
    provider.fail("m", 529)
    with pytest.raises(anthropic.APIStatusError) as info:
        ant(provider).messages.create(model="m", max_tokens=9, messages=MSG)
    assert type(info.value).__name__ == "OverloadedError" and error_class(info.value) == "overloaded"


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_dropped_connection_and_an_error_inside_a_200_stream(provider: FakeProvider, sdk: str) -> None:
    provider.fail("m", "drop", after_chunks=2, times=1)
    provider.fail("m", "stream_error", after_chunks=1, times=1)
    for expected in ("connection", "server_error"):
        if sdk == "openai":
            stream = oai(provider).chat.completions.create(model="m", messages=MSG, stream=True)
        else:
            stream = ant(provider).messages.create(model="m", max_tokens=9, messages=MSG, stream=True)
        got: list[Any] = []
        with pytest.raises(Exception) as info:
            got.extend(stream)
        assert got, "some chunks arrived before the failure"
        assert error_class(info.value) == expected, info.value


def test_faults_are_taken_in_order_and_heal(provider: FakeProvider) -> None:
    provider.fail("m", 503, times=1)
    provider.fail("m", 500, times=1)
    client = oai(provider)
    for status in (503, 500):
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="m", messages=MSG)
        assert info.value.status_code == status
    assert client.chat.completions.create(model="m", messages=MSG).choices[0].message.content
    provider.fail("m", 503)
    provider.heal("m")
    assert client.chat.completions.create(model="m", messages=MSG).choices[0].message.content
    with pytest.raises(ValueError, match="unknown fault 'explode'"):
        provider.fail("m", "explode")

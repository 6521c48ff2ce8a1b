"""engine.adapters.LLM / AsyncLLM with the real openai and anthropic SDKs against two fake providers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import PolicyEngine
from engine.adapters import LLM, AsyncLLM, ClientsError
from engine.streaming import AsyncStream, Stream
from engine.testing import FakeProvider

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

MSG = [{"role": "user", "content": "tell me a story"}]
MINI, MINI_EU = "gpt-4.1-mini", "mini-eu"  # one API model, two providers
HAIKU, SONNET = "claude-haiku-4-5", "claude-sonnet-4-5"


@pytest.fixture
def second() -> Iterator[FakeProvider]:
    with FakeProvider() as fp:
        yield fp


def policies(policy_dir: Path, *extra_routing: str) -> Path:
    """The shipped set plus mini-eu: gpt-4.1-mini served by a second provider, L2's second candidate."""
    (policy_dir / "deployments.yaml").write_text(
        "kind: models\nversion: 1\nmodels:\n"
        "  mini-eu:\n    api_model: gpt-4.1-mini\n    tier: L2\n    provider: openai-eu\n"
        "    context_window: 1047576\n    price: {input_per_1m: 0.40, output_per_1m: 1.60}\n")
    routing = policy_dir / "routing.yaml"
    text = routing.read_text().replace("candidates: [gpt-4.1-mini,", "candidates: [gpt-4.1-mini, mini-eu,")
    routing.write_text(text + "".join(extra_routing))
    return policy_dir


OPEN: list[LLM] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()  # their connection pools: no unclosed sockets left to the garbage collector


def sync_llm(eng: PolicyEngine, fp: FakeProvider, eu: FakeProvider) -> LLM:
    OPEN.append(LLM(eng, {"openai": openai.OpenAI(base_url=fp.openai_url, api_key="k"),
                          "openai-eu": openai.OpenAI(base_url=eu.openai_url, api_key="k"),
                          "anthropic": anthropic.Anthropic(base_url=fp.anthropic_url, api_key="k")}))
    return OPEN[-1]


def test_a_tier_answers_with_the_sdk_response_and_its_usage(policy_dir: Path, provider: FakeProvider,
                                                            second: FakeProvider) -> None:
    eng = PolicyEngine.from_path(policies(policy_dir))
    provider.reply(MINI, "one two three", cached_tokens=2)
    r = sync_llm(eng, provider, second).chat.completions.create(tier="L2", messages=MSG)
    assert type(r).__name__ == "ChatCompletion" and r.choices[0].message.content == "one two three"
    m = eng.state(MINI)["metrics"]
    assert (m["successes"], m["tokens_in"], m["tokens_out"]) == (1, 4, 3)
    assert provider.calls()[0].model == MINI


def test_sdk_retries_are_off_so_the_breaker_sees_every_request(policy_dir: Path, provider: FakeProvider,
                                                              second: FakeProvider) -> None:
    eng = PolicyEngine.from_path(policies(policy_dir))
    provider.fail(MINI, 503)
    r = sync_llm(eng, provider, second).chat.completions.create(tier="L2", messages=MSG)
    assert r.choices[0].message.content
    # the engine's one same-model retry: two requests, both seen and recorded; then the EU deployment answers
    assert len(provider.calls(MINI)) == 2 and eng.state(MINI)["metrics"]["failures"] == 2
    assert [c.model for c in second.calls()] == [MINI]  # api_model sent to the second provider
    assert eng.state(MINI_EU)["metrics"]["successes"] == 1


@pytest.mark.parametrize(("fault", "kw"), [("not_found", {}), ("insufficient_quota", {}), (429, {"retry_after": 0})])
def test_provider_errors_fall_back_per_the_shipped_rules(policy_dir: Path, provider: FakeProvider,
                                                          second: FakeProvider, fault: Any, kw: Any) -> None:
    eng = PolicyEngine.from_path(policies(policy_dir))
    provider.fail(MINI, fault, **kw)
    r = sync_llm(eng, provider, second).chat.completions.create(tier="L2", messages=MSG)
    assert r.choices[0].message.content
    tries = len(provider.calls(MINI))
    assert tries == (2 if fault == 429 else 1)  # only the plain rate limit is retried on the same model


def test_a_hung_model_times_out_per_attempt_and_falls_back(policy_dir: Path, provider: FakeProvider,
                                                           second: FakeProvider) -> None:
    eng = PolicyEngine.from_path(policies(policy_dir, "timeouts:\n  attempt_s: 0.2\n"))
    provider.fail(MINI, "hang", hang_s=30)
    t0 = time.monotonic()
    r = sync_llm(eng, provider, second).chat.completions.create(tier="L2", messages=MSG)
    assert r.choices[0].message.content and time.monotonic() - t0 < 1.5
    assert eng.state(MINI)["metrics"]["errors_timeout"] == 2


def test_with_raw_response_records_the_usage(policy_dir: Path, provider: FakeProvider, second: FakeProvider) -> None:
    eng = PolicyEngine.from_path(policies(policy_dir))
    raw = sync_llm(eng, provider, second).chat.completions.with_raw_response.create(tier="L2", messages=MSG)
    assert raw.http_response.status_code == 200 and raw.parse().usage.completion_tokens == 5
    assert eng.state(MINI)["metrics"]["tokens_out"] == 5
    with pytest.raises(ValueError, match=r"with_raw_response with stream=True is not supported"):
        sync_llm(eng, provider, second).chat.completions.with_raw_response.create(tier="L2", messages=MSG,
                                                                                   stream=True)
    with pytest.raises(TypeError, match=r"pass tier=\.\.\., not model=\.\.\."):
        sync_llm(eng, provider, second).chat.completions.create(tier="L2", model="x", messages=MSG)


def test_an_openai_stream_records_ttft_and_the_usage_chunk(policy_dir: Path, provider: FakeProvider,
                                                            second: FakeProvider) -> None:
    eng = PolicyEngine.from_path(policies(policy_dir))
    provider.reply(MINI, "a b c d", ttft_s=0.05, chunk_interval_s=0.05)
    stream = sync_llm(eng, provider, second).chat.completions.create(tier="L2", messages=MSG, stream=True)
    assert isinstance(stream, Stream) and stream.response.status_code == 200
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b c d"
    state = eng.state(MINI)
    assert stream.response.status_code == 200  # still the SDK stream's own attributes after the end
    assert (state["metrics"]["tokens_in"], state["metrics"]["tokens_out"]) == (4, 4)
    assert 50 <= state["ttft"]["p50_ms"] < 150 <= 200 <= state["metrics"]["p50_ms"]  # first token, then 3 x 50 ms


def test_a_dropped_stream_continues_on_the_other_deployment_seamlessly(policy_dir: Path, provider: FakeProvider,
                                                                       second: FakeProvider) -> None:
    eng = PolicyEngine.from_path(policies(policy_dir, "timeouts:\n  after_content: continue\n"))
    story = "once upon a time there was a model"
    provider.reply(MINI, story)
    second.reply(MINI, story)
    provider.fail(MINI, "drop", after_chunks=3)
    stream = sync_llm(eng, provider, second).chat.completions.create(tier="L2", messages=MSG, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == story
    assert second.calls()[0].body["messages"][-1] == {"role": "assistant", "content": "once upon a"}
    assert eng.state(MINI)["metrics"]["errors_connection"] == 1 and eng.state(MINI_EU)["metrics"]["successes"] == 1


def test_anthropic_messages_credit_exhaustion_falls_back_to_the_next_anthropic_model(
        policy_dir: Path, provider: FakeProvider, second: FakeProvider) -> None:
    eng = PolicyEngine.from_path(policies(policy_dir))
    provider.fail(HAIKU, "credit", times=1)
    m = sync_llm(eng, provider, second).messages.create(tier="L2", max_tokens=50, messages=MSG)
    assert type(m).__name__ == "Message" and m.model == SONNET  # L2's only Anthropic model failed: L3's answered
    assert eng.state(HAIKU)["metrics"]["errors_quota_exhausted"] == 1
    events = list(sync_llm(eng, provider, second).messages.create(tier="L2", max_tokens=50, messages=MSG,
                                                                   stream=True))
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    assert eng.state(HAIKU)["metrics"]["tokens_in"] == 4


def test_providers_from_the_policies_take_the_key_from_the_environment(
        policy_dir: Path, provider: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    (policy_dir / "providers.yaml").write_text(
        "kind: models\nversion: 1\nmodels:\n"
        "  local-llama:\n    api_model: llama-3.1-8b\n    tier: L2\n    provider: local\n"
        "    context_window: 131072\n    price: {input_per_1m: 0, output_per_1m: 0}\n"
        f"providers:\n  local: {{sdk: openai, base_url: '{provider.openai_url}', api_key_env: LOCAL_LLM_KEY}}\n")
    routing = policy_dir / "routing.yaml"
    routing.write_text(routing.read_text().replace("candidates: [gpt-4.1-mini,",
                                                   "candidates: [local-llama, gpt-4.1-mini,"))
    eng = PolicyEngine.from_path(policy_dir)
    with pytest.raises(ClientsError, match="environment variable LOCAL_LLM_KEY"):
        LLM(eng)
    monkeypatch.setenv("LOCAL_LLM_KEY", "secret-123")
    OPEN.append(LLM(eng))
    r = OPEN[-1].chat.completions.create(tier="L2", messages=MSG)
    assert r.choices[0].message.content
    call = provider.calls()[0]
    assert call.model == "llama-3.1-8b" and call.headers.get("authorization") == "Bearer secret-123"


def test_clients_must_fit_the_adapter(policy_dir: Path, provider: FakeProvider) -> None:
    eng = PolicyEngine.from_path(policy_dir)
    with pytest.raises(ClientsError, match=r"AsyncOpenAI; LLM takes synchronous clients"):
        LLM(eng, {"openai": openai.AsyncOpenAI(base_url=provider.openai_url, api_key="k")})  # never connects
    with pytest.raises(ClientsError, match="expected an openai or anthropic client"):
        LLM(eng, {"openai": object()})


def test_async_clients_enforce_the_attempt_timeout_and_stream(policy_dir: Path, provider: FakeProvider,
                                                              second: FakeProvider) -> None:
    eng = PolicyEngine.from_path(policies(policy_dir, "timeouts:\n  attempt_s: 0.2\n"))
    provider.fail(MINI, "hang", hang_s=30)
    llm = AsyncLLM(eng, {"openai": openai.AsyncOpenAI(base_url=provider.openai_url, api_key="k"),
                         "openai-eu": openai.AsyncOpenAI(base_url=second.openai_url, api_key="k")})

    async def main() -> tuple[str, str]:
        r = await llm.chat.completions.create(tier="L2", messages=MSG)
        s = await llm.chat.completions.create(tier="L2", messages=MSG, stream=True)
        assert isinstance(s, AsyncStream)
        text = "".join([c.choices[0].delta.content or "" async for c in s if c.choices])
        await llm.aclose()
        return r.choices[0].message.content, text

    t0 = time.monotonic()
    answer, streamed = asyncio.run(main())
    assert answer == streamed == "Hello from the fake provider."
    assert time.monotonic() - t0 < 2.0
    assert eng.state(MINI)["metrics"]["errors_timeout"] >= 2 and eng.state(MINI)["in_flight"] == 0


def test_cached_input_tokens_have_their_own_price(policy_dir: Path, provider: FakeProvider,
                                                  second: FakeProvider) -> None:
    eng = PolicyEngine.from_path(policies(policy_dir))
    provider.reply(MINI, "one two three", cached_tokens=3)  # 4 input tokens, 3 from the cache
    sync_llm(eng, provider, second).chat.completions.create(tier="L2", messages=MSG)
    # gpt-4.1-mini: input 0.40, cached input 0.10, output 1.60 per 1M tokens
    assert eng.state(MINI)["metrics"]["cost_usd"] == pytest.approx((1 * 0.40 + 3 * 0.10 + 3 * 1.60) / 1e6)
    provider.reply(MINI, "one two three", cached_tokens=3, ttft_s=0.0)
    list(sync_llm(eng, provider, second).chat.completions.create(tier="L2", messages=MSG, stream=True))
    assert eng.state(MINI)["metrics"]["cost_usd"] == pytest.approx(2 * (1 * 0.40 + 3 * 0.10 + 3 * 1.60) / 1e6)


def test_the_engine_and_the_adapters_work_without_any_sdk(policy_dir: Path) -> None:
    import subprocess
    import sys

    (policy_dir / "providers.yaml").write_text(
        "kind: models\nversion: 1\nmodels:\n  gpt-4o-mini:\n    tier: L1\n    provider: openai\n"
        "    context_window: 128000\n    price: {input_per_1m: 0.15, output_per_1m: 0.6}\n"
        "providers:\n  openai: {sdk: openai, base_url: 'http://127.0.0.1:9/v1'}\n")
    models = policy_dir / "models.yaml"
    text = models.read_text()
    start = text.index("  gpt-4o-mini:")
    models.write_text(text[:start] + text[text.index("  # --- L2", start):])
    code = f"""
import sys
for name in ("openai", "anthropic", "httpx", "httpx2"):
    sys.modules[name] = None  # not installed
import engine, engine.adapters, engine.testing
from engine import PolicyEngine
eng = PolicyEngine.from_path({str(policy_dir)!r})
assert "".join(eng.call("L2", lambda m: iter(["a", "b"]))) == "ab"
try:
    engine.adapters.LLM(eng)
except engine.adapters.ClientsError as exc:
    print(exc)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "provider 'openai' needs the openai SDK: pip install 'llm-policy-engine[openai]'"


def test_async_anthropic_stream_falls_back_on_529_and_a_later_drop_reaches_the_caller(
        policy_dir: Path, provider: FakeProvider) -> None:
    eng = PolicyEngine.from_path(policy_dir)
    provider.fail(HAIKU, 529)
    llm = AsyncLLM(eng, {"anthropic": anthropic.AsyncAnthropic(base_url=provider.anthropic_url, api_key="k")})

    async def main() -> tuple[list[Any], list[Any], BaseException | None]:
        stream = await llm.messages.create(tier="L2", max_tokens=50, messages=MSG, stream=True)
        events = [e async for e in stream]
        provider.heal()
        provider.fail(HAIKU, "drop", after_chunks=2)
        got: list[Any] = []
        error = None
        try:
            async for e in await llm.messages.create(tier="L2", max_tokens=50, messages=MSG, stream=True):
                got.append(e)
        except Exception as exc:  # the async Anthropic stream raises httpx2.RemoteProtocolError
            error = exc
        await llm.aclose()
        return events, got, error

    events, got, error = asyncio.run(main())
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    assert eng.state(HAIKU)["metrics"]["errors_overloaded"] == 2  # one same-model retry, then L3's Sonnet
    assert eng.state(SONNET)["metrics"]["successes"] == 1 and eng.state(SONNET)["metrics"]["tokens_out"] == 5
    assert type(error).__name__ in ("RemoteProtocolError", "APIConnectionError")  # after content: raised
    assert [e.type for e in got].count("content_block_delta") == 2
    m = eng.state(HAIKU)["metrics"]
    assert m["errors_connection"] == 1 and eng.state(HAIKU)["in_flight"] == 0

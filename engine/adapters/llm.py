"""The tier-asking facade over OpenAI and Anthropic SDK clients (see :mod:`engine.adapters`).

Each candidate model is served by the client of its ``provider`` (a key of
``clients``, or built from the policies' ``providers``: an OpenAI-compatible
``base_url`` and the environment variable holding its key). Requests go out
with the model's ``api_model``, the attempt's timeout, and the SDK's own
retries off (``max_retries=0``: the engine retries and falls back, and its
breakers must see every failed request). ``chat.completions.create`` uses the
OpenAI-kind clients, ``messages.create`` the Anthropic-kind ones; models of
other providers are excluded from the call. A stream asks OpenAI for its
usage chunk (``stream_options.include_usage``) unless the caller set
``stream_options``; a stream continued on another model after a failure
(``timeouts.after_content: continue``) sends the partial answer as an
assistant prefill. ``with_raw_response.create`` returns the SDK's raw
response, its usage read through ``parse()``.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from engine.calling import Attempt
from engine.errors import PolicyEngineError

if TYPE_CHECKING:
    from engine.core import PolicyEngine

__all__ = ["AsyncLLM", "ClientsError", "LLM"]

_KINDS = ("openai", "anthropic")


class ClientsError(PolicyEngineError, ValueError):
    """The clients given or the policies' ``providers`` cannot be used (missing key variable, unknown SDK...)."""


def sdk_kind(client: Any) -> str:
    """``"openai"`` or ``"anthropic"``: which SDK made ``client`` (by its module, without importing SDKs)."""
    module = type(client).__module__.split(".", 1)[0]
    if module in _KINDS:
        return module
    raise ClientsError(f"expected an openai or anthropic client, got {type(client).__module__}."
                       f"{type(client).__qualname__}")


def _build(name: str, sdk: str, base_url: str | None, key_env: str | None, asynchronous: bool) -> Any:
    key = None
    if key_env is not None:
        key = os.environ.get(key_env)
        if not key:
            raise ClientsError(f"provider {name!r}: environment variable {key_env} (api_key_env) is not set")
    try:
        module = __import__(sdk)
    except ImportError as exc:
        raise ClientsError(f"provider {name!r} needs the {sdk} SDK: pip install 'llm-policy-engine[{sdk}]'") from exc
    cls = getattr(module, ("Async" if asynchronous else "") + ("OpenAI" if sdk == "openai" else "Anthropic"))
    kwargs: dict[str, Any] = {"max_retries": 0}
    if base_url is not None:
        kwargs["base_url"] = base_url
    if key is not None:
        kwargs["api_key"] = key
    return cls(**kwargs)


class _Base:
    _async = False

    def __init__(self, engine: PolicyEngine, clients: Mapping[str, Any] | None = None, *,
                 classifier: Any = None) -> None:
        self.engine = engine
        self.classifier = classifier
        for c in (clients or {}).values():
            sdk_kind(c)
        self._given = {name: c.with_options(max_retries=0) for name, c in (clients or {}).items()}
        for name, c in self._given.items():
            if self._async != type(c).__name__.startswith("Async"):
                want = "async" if self._async else "synchronous"
                raise ClientsError(f"client {name!r} is {type(c).__name__}; {type(self).__name__} takes {want} clients")
        self._revision = ""
        self._routes: dict[str, tuple[str, Any]] = {}  # model -> (sdk kind, client)
        self._exclude: dict[str, frozenset[str]] = {}
        self.chat = _Chat(self)
        self.messages = _Endpoint(self, "anthropic", raw=False)
        self._refresh()

    def _refresh(self) -> None:
        """Map every model to its provider's client (again after a reload)."""
        policy = self.engine.policy
        clients = dict(self._given)
        for name, p in policy.providers.items():
            if name not in clients and (p.base_url is not None or p.api_key_env is not None):
                clients[name] = _build(name, p.sdk, p.base_url, p.api_key_env, self._async)
        routes = {m: (sdk_kind(clients[s.provider]), clients[s.provider])
                  for m, s in policy.models.items() if s.provider in clients}
        self._routes = routes
        self._exclude = {k: frozenset(m for m in policy.models if routes.get(m, ("",))[0] != k) for k in _KINDS}
        self._revision = policy.revision

    def _prepare(self, kind: str, raw: bool, kwargs: dict[str, Any]) -> tuple[Any, Collection[str]]:
        if self.engine.policy.revision != self._revision:
            self._refresh()
        if "model" in kwargs:
            raise TypeError("pass tier=..., not model=...: the engine chooses the model")
        if raw and kwargs.get("stream"):
            raise ValueError("with_raw_response with stream=True is not supported: call create(stream=True) and "
                             "read .response on the stream it returns")
        if kind == "openai" and kwargs.get("stream") and "stream_options" not in kwargs:
            kwargs["stream_options"] = {"include_usage": True}  # the usage chunk the engine records
        routes = self._routes

        def fn(model: str, attempt: Attempt) -> Any:
            client = routes[model][1]
            target = client.chat.completions if kind == "openai" else client.messages
            if raw:
                target = target.with_raw_response
            args = kwargs
            if attempt.partial:  # carry on from what the caller already received
                # Anthropic refuses a prefill that ends in whitespace: the continuation may repeat that space
                prefill = attempt.partial.rstrip() if kind == "anthropic" else attempt.partial
                args = {**kwargs, "messages": [*kwargs.get("messages", ()),
                                               {"role": "assistant", "content": prefill}]}
            if attempt.timeout_s is not None:
                return target.create(model=attempt.api_model, timeout=attempt.timeout_s, **args)
            return target.create(model=attempt.api_model, **args)

        return fn, self._exclude[kind]


class LLM(_Base):
    """Synchronous ``openai.OpenAI`` / ``anthropic.Anthropic`` clients behind ``eng.call``."""

    def close(self) -> None:
        """Close every client (their connection pools)."""
        for client in {id(c): c for _, c in self._routes.values()}.values():
            client.close()

    def _create(self, kind: str, raw: bool, tier: str, estimated_tokens: int | None, deadline_s: float | None,
                kwargs: dict[str, Any]) -> Any:
        fn, exclude = self._prepare(kind, raw, kwargs)
        return self.engine.call(tier, fn, estimated_tokens=estimated_tokens, classifier=self.classifier,
                                deadline_s=deadline_s, exclude=exclude)


class AsyncLLM(_Base):
    """``openai.AsyncOpenAI`` / ``anthropic.AsyncAnthropic`` clients behind ``eng.acall`` (timeouts enforced)."""

    _async = True

    async def aclose(self) -> None:
        """Close every client (their connection pools)."""
        for client in {id(c): c for _, c in self._routes.values()}.values():
            await client.close()

    async def _create(self, kind: str, raw: bool, tier: str, estimated_tokens: int | None,
                      deadline_s: float | None, kwargs: dict[str, Any]) -> Any:
        fn, exclude = self._prepare(kind, raw, kwargs)
        return await self.engine.acall(tier, fn, estimated_tokens=estimated_tokens, classifier=self.classifier,
                                       deadline_s=deadline_s, exclude=exclude)


class _Endpoint:
    """``create(tier=..., **the SDK's own arguments)``; ``with_raw_response.create`` likewise."""

    def __init__(self, owner: _Base, kind: str, raw: bool) -> None:
        self._owner, self._kind, self._raw = owner, kind, raw
        if not raw:
            self.with_raw_response = _Endpoint(owner, kind, raw=True)

    def create(self, *, tier: str, estimated_tokens: int | None = None, deadline_s: float | None = None,
               **kwargs: Any) -> Any:
        return self._owner._create(self._kind, self._raw, tier, estimated_tokens,  # type: ignore[attr-defined]
                                   deadline_s, kwargs)


class _Chat:
    def __init__(self, owner: _Base) -> None:
        self.completions = _Endpoint(owner, "openai", raw=False)

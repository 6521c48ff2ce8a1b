"""Adapters that put the engine inside the official provider SDKs (optional extras ``[openai]``, ``[anthropic]``).

:class:`LLM` wraps synchronous ``openai.OpenAI`` / ``anthropic.Anthropic``
clients, :class:`AsyncLLM` their async twins, so application code asks for a
tier and gets the SDK's own response or stream::

    llm = LLM(eng, {"openai": OpenAI(), "anthropic": Anthropic()})
    r = llm.chat.completions.create(tier="L2", messages=[...])
    m = llm.messages.create(tier="L3", max_tokens=500, messages=[...])

May import: the core (``engine.calling``, ``engine.core`` for types,
``engine.policy.model``) and, lazily, the SDKs themselves — never at import
time, so the engine stays importable and usable with no SDK installed.
Nothing in the core imports this package (a contract in pyproject.toml).
"""

from __future__ import annotations

from engine.adapters.llm import LLM, AsyncLLM, ClientsError

__all__ = ["AsyncLLM", "ClientsError", "LLM"]

"""Time LiteLLM's Router on a mocked four-deployment completion; prints JSON.

Run with an interpreter that has litellm (it pulls in a large dependency tree,
so it is kept out of this project's environment):

    python -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install litellm
    LITELLM_PYTHON=/tmp/llvenv/bin/python python -m pytest benchmarks/test_bench_engine.py --benchmark-only
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the remote price list

from litellm import Router

MODELS = ("gpt-4.1-mini", "gemini-2.5-flash", "claude-haiku-4-5", "mistral-small-latest")


def main(rounds: int) -> None:
    router = Router(model_list=[
        {"model_name": "L2", "litellm_params": {"model": f"openai/{m}", "api_key": "sk-mock", "mock_response": "ok"}}
        for m in MODELS], num_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    for _ in range(50):
        router.completion(model="L2", messages=messages)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        router.completion(model="L2", messages=messages)
        times.append(time.perf_counter() - start)
    times.sort()
    print(json.dumps({"median_us": statistics.median(times) * 1e6, "p99_us": times[int(len(times) * 0.99)] * 1e6,
                      "rounds": rounds}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)

#!/usr/bin/env python3
"""Derive ``engine/data/workload.json`` from the real traces in ``../shared/traces``.

The shipped file lets ``policy-engine simulate`` run on a fresh clone without
``../shared``. It holds only aggregates of the two public data sets:

* Azure LLM inference trace 2023 (CC-BY-4.0): the number of requests in each
  whole minute of the code and conv traces, and 201 quantiles (every 0.5%) of
  their context and generated token counts;
* LLMPerf leaderboard 2023 (Apache-2.0): per provider x model run, 51
  quantiles (every 2%) of the time to first token and of the decode time per
  output token of the successful requests, the run's success / error
  sequence in request order ("." success, "r" HTTP 429, "x" too few output
  tokens, "e" any other error), and quantiles of the output a truncated
  (Bedrock) response did deliver, as a fraction of the 150 tokens asked for.

Choices that are not in the data are written here, next to the numbers they
shape, and copied into the file: the diurnal profile of the day, the calls
per day, the split of each trace into tiers, and which LLMPerf run stands in
for the latency of which model.

    python scripts/derive_workload.py            # rewrite engine/data/workload.json
    python scripts/derive_workload.py --check    # exit 1 if the shipped file is stale
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT.parent / "shared" / "traces"
OUT = ROOT / "engine" / "data" / "workload.json"

TOKEN_QUANTILES = 201  # every 0.5%
LATENCY_QUANTILES = 51  # every 2%
LLMPERF_OUTPUT_TOKENS = 150  # what every LLMPerf request asked for

#: Relative request rate per local hour (00-23) of the simulated day: a
#: European business-hours service (night trough, morning ramp, lunch dip,
#: afternoon peak). An assumption: the Azure traces cover one hour only.
DIURNAL = [0.22, 0.16, 0.13, 0.12, 0.13, 0.18, 0.30, 0.50, 0.75, 0.92, 1.00, 0.98,
           0.85, 0.90, 0.97, 1.00, 0.95, 0.82, 0.66, 0.55, 0.48, 0.42, 0.35, 0.28]
#: Requests in the simulated day (the traces' hour then sits near the peak hour).
CALLS_PER_DAY = 432_000
#: Which tier a request of each trace goes to (shares). Code completions are
#: short answers to long contexts: the fast, cheap L1. Conversations go mostly
#: to L2, some to the stronger L3 and L4; the L3/L4 shares are kept small
#: enough that the default budgets (sized for a few thousand deep calls a
#: day) hold on a normal day.
TIER_MIX = {"code": {"L1": 1.0}, "conv": {"L2": 0.935, "L3": 0.05, "L4": 0.015}}
#: Which LLMPerf run's latencies stand in for each model of the default
#: policies, by speed class: the L1 models get the fastest runs, L4 the
#: slowest (reasoning models think). Only runs without a systematic failure
#: serve as latencies; Lepton and Bedrock serve as failure shapes.
MODEL_RUNS = {
    "gpt-4.1-nano": "groq_70b",
    "gemini-2.5-flash-lite": "anyscale_13b",
    "gpt-4o-mini": "fireworks_7b",
    "gpt-4.1-mini": "together_70b",
    "gemini-2.5-flash": "anyscale_70b",
    "claude-haiku-4-5": "together_7b",
    "mistral-small-latest": "together_13b",
    "claude-sonnet-4-5": "fireworks_70b",
    "gpt-4.1": "perplexity_70b",
    "gemini-2.5-pro": "fireworks_13b",
    "gpt-5": "replicate_70b",
    "claude-opus-4-1": "replicate_13b",
    "o3": "replicate_7b",
}
#: A model the table above does not name (another policy set) gets its home tier's run.
TIER_RUNS = {"L1": "groq_70b", "L2": "together_70b", "L3": "fireworks_70b", "L4": "replicate_70b"}

SOURCES = [
    {
        "name": "azure-llm-2023",
        "title": "Azure LLM inference trace 2023 (Azure Public Dataset, Splitwise, ISCA 2024)",
        "url": "https://github.com/Azure/AzurePublicDataset",
        "copyright": "Microsoft Corporation",
        "license": "CC-BY-4.0",
        "license_url": "https://creativecommons.org/licenses/by/4.0/",
        "files": ["AzureLLMInferenceTrace_code.csv", "AzureLLMInferenceTrace_conv.csv"],
        "changes": "aggregated: requests per whole minute, quantiles of context and generated tokens",
    },
    {
        "name": "llmperf-2023",
        "title": "LLMPerf leaderboard, December 2023 (ray-project/llmperf-leaderboard)",
        "url": "https://github.com/ray-project/llmperf-leaderboard",
        "copyright": "the llmperf-leaderboard authors (Anyscale / Ray project)",
        "license": "Apache-2.0",
        "license_url": "https://www.apache.org/licenses/LICENSE-2.0",
        "files": ["llmperf_requests.csv"],
        "changes": "aggregated: latency quantiles per run, success/error sequences, truncated-output quantiles",
    },
]


def quantiles(values: list[float], n: int) -> list[float]:
    """``n`` evenly spaced quantiles (min to max), linear between order statistics."""
    v = sorted(values)
    out = []
    for i in range(n):
        pos = i * (len(v) - 1) / (n - 1)
        lo = int(pos)
        hi = min(lo + 1, len(v) - 1)
        out.append(v[lo] + (v[hi] - v[lo]) * (pos - lo))
    return out


def spearman(a: list[int], b: list[int]) -> float:
    def ranks(v: list[int]) -> list[int]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0] * len(v)
        for i, j in enumerate(order):
            r[j] = i
        return r

    ra, rb = ranks(a), ranks(b)
    m = (len(a) - 1) / 2
    num = sum((x - m) * (y - m) for x, y in zip(ra, rb, strict=True))
    den = sum((x - m) ** 2 for x in ra)
    return num / den


def azure(path: Path) -> dict[str, Any]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    times = [datetime.fromisoformat(r["TIMESTAMP"][:26]).timestamp() for r in rows]
    t0 = min(times)
    per_minute = Counter(int((t - t0) // 60) for t in times)
    whole = int((max(times) - t0) // 60)  # the last, partial minute is dropped
    context = [int(r["ContextTokens"]) for r in rows]
    generated = [int(r["GeneratedTokens"]) for r in rows]
    return {
        "requests": len(rows),
        "first": rows[0]["TIMESTAMP"],
        "per_minute": [per_minute.get(m, 0) for m in range(whole)],
        "context_tokens": [round(q) for q in quantiles(context, TOKEN_QUANTILES)],
        "generated_tokens": [round(q) for q in quantiles(generated, TOKEN_QUANTILES)],
        "spearman_context_generated": round(spearman(context, generated), 3),
    }


def _code(row: dict[str, str]) -> str:
    code = row["error_code"]
    if not code:
        return "."
    if float(code) == 429:
        return "r"
    if float(code) == -100:
        return "x"
    return "e"


def llmperf(path: Path) -> dict[str, Any]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    runs: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        runs.setdefault(r["run"], []).append(r)
    out: dict[str, Any] = {}
    for name in sorted(runs):
        ordered = sorted(runs[name], key=lambda r: int(r["seq"]))
        ok = [r for r in ordered if not r["error_code"]]
        ttft = [float(r["ttft_s"]) for r in ok]
        decode = [(float(r["end_to_end_latency_s"]) - float(r["ttft_s"])) / int(r["number_output_tokens"])
                  for r in ok]
        e2e = sorted(float(r["end_to_end_latency_s"]) for r in ok)
        truncated = [int(r["number_output_tokens"]) / LLMPERF_OUTPUT_TOKENS for r in ordered
                     if _code(r) == "x"]
        run: dict[str, Any] = {
            "requests": len(ordered),
            "pattern": "".join(_code(r) for r in ordered),
            "e2e_p50_s": round(e2e[len(e2e) // 2], 3),
            "ttft_s": [round(q, 4) for q in quantiles(ttft, LATENCY_QUANTILES)],
            "decode_s_per_token": [round(q, 6) for q in quantiles(decode, LATENCY_QUANTILES)],
        }
        if truncated:
            run["truncated_output_fraction"] = [round(q, 3) for q in quantiles(truncated, 21)]
        out[name] = run
    return out


def derive(traces: Path) -> dict[str, Any]:
    code = azure(traces / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv")
    conv = azure(traces / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv")
    runs = llmperf(traces / "llmperf-2023" / "llmperf_requests.csv")
    missing = sorted({*MODEL_RUNS.values(), *TIER_RUNS.values()} - set(runs))
    if missing:
        raise SystemExit(f"runs not in llmperf_requests.csv: {', '.join(missing)}")
    return {
        "format": "llm-policy-engine workload",
        "version": 1,
        "derived_by": "scripts/derive_workload.py from ../shared/traces (see engine/data/NOTICE.md)",
        "sources": SOURCES,
        "day": {"calls_per_day": CALLS_PER_DAY, "diurnal": DIURNAL},
        "traces": {"code": code, "conv": conv},
        "tier_mix": TIER_MIX,
        "latency": {"model_runs": MODEL_RUNS, "tier_runs": TIER_RUNS, "runs": runs},
        "failure_shapes": {
            "rate_limit_storm": {
                "runs": ["lepton_13b", "lepton_70b", "lepton_7b"],
                "pattern": "".join(runs[r]["pattern"] for r in ("lepton_13b", "lepton_70b", "lepton_7b")),
            },
            "truncating_65": {"runs": ["bedrock_13b"], "pattern": runs["bedrock_13b"]["pattern"],
                              "truncated_output_fraction": runs["bedrock_13b"]["truncated_output_fraction"]},
            "truncating_33": {"runs": ["bedrock_70b"], "pattern": runs["bedrock_70b"]["pattern"],
                              "truncated_output_fraction": runs["bedrock_70b"]["truncated_output_fraction"]},
        },
    }


def dumps(obj: Any, indent: int = 0) -> str:
    """JSON with one key per line and every list of numbers or short strings on one line."""
    pad = "  " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(obj, list) and any(isinstance(v, dict) for v in obj):
        return "[\n" + ",\n".join(pad + dumps(v, indent + 1) for v in obj) + "\n" + "  " * indent + "]"
    return json.dumps(obj, ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--traces", type=Path, default=TRACES, help=f"the shared traces (default {TRACES})")
    p.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    p.add_argument("--check", action="store_true", help="exit 1 if --out differs from a fresh derivation")
    args = p.parse_args(argv)
    if not args.traces.is_dir():
        print(f"derive_workload: {args.traces} not found", file=sys.stderr)
        return 2
    text = dumps(derive(args.traces)) + "\n"
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'stale: run scripts/derive_workload.py'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``policy-engine replay``: the trace format, malformed lines, side-by-side runs, converters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.policy.resources import resource_dir
from engine.sim.trace import read_trace

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "traces"
AZURE_CONV = SHARED / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
LLMPERF = SHARED / "llmperf-2023" / "llmperf_requests.csv"
REPLAY = "import sys; from engine.cli.sim import main_replay; sys.exit(main_replay(sys.argv[1:]))"
SIMULATE = "import sys; from engine.cli.sim import main_simulate; sys.exit(main_simulate(sys.argv[1:]))"
POLICIES = str(resource_dir("policies"))
T0 = 1_767_258_000.0  # 2026-01-01 10:00 Europe/Berlin


def replay(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", REPLAY, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, check=False)


def replay_json(*args: str) -> dict[str, Any]:
    done = replay(*args, "--json", "-q")
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def policy_copy(tmp_path: Path, name: str, edit: tuple[str, str, str] | None = None) -> Path:
    """A copy of the default policies named ``name``, with ``(file, old, new)`` replaced."""
    dest = tmp_path / name
    shutil.copytree(POLICIES, dest)
    if edit is not None:
        file, old, new = edit
        text = (dest / file).read_text(encoding="utf-8")
        assert old in text
        (dest / file).write_text(text.replace(old, new), encoding="utf-8")
    return dest


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("timestamp,tier,model,input_tokens,output_tokens,outcome,latency_ms\n" + "\n".join(rows) + "\n",
                    encoding="utf-8")
    return path


def healthy_rows(n: int, tier: str = "L2", step: float = 2.0) -> list[str]:
    return [f"{T0 + i * step:.3f},{tier},,1200,300,ok," for i in range(n)]


# -- reading ------------------------------------------------------------------------------------
def test_a_small_csv_trace_replays_through_one_policy_set(tmp_path: Path) -> None:
    trace = write_csv(tmp_path / "t.csv", healthy_rows(40) + healthy_rows(20, "L1") +
                      [f"2026-01-01T09:{m:02d}:00Z,L4,,2000,800,,15000" for m in range(10)])
    done = replay(str(trace), "--policies", POLICIES, "-q")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(f"replay: {trace} (trace-csv): 70 calls from 70 of 70 lines")
    assert "availability" in out and "100.000%" in out and "p95 latency" in out and "SKIPPED" not in out
    run = replay_json(str(trace), "--policies", POLICIES)["runs"][0]
    assert run["calls"] == run["successes"] == 70 and run["tiers"]["L4"] == {"calls": 10, "successes": 10}
    assert run["tokens_per_success"] == pytest.approx((60 * 1500 + 10 * 2800) / 70)
    assert run["latency_p95_s"] == pytest.approx(15.0)  # the recorded L4 latency, the longest


def test_jsonl_attempts_of_one_request_replay_as_one_call(tmp_path: Path) -> None:
    lines = [
        {"timestamp": T0, "request_id": "r1", "tier": "L2", "model": "gpt-4.1-mini", "input_tokens": 1000,
         "output_tokens": 0, "outcome": "server_error", "latency_ms": 120},
        {"timestamp": T0 + 0.4, "request_id": "r1", "tier": "L2", "model": "gemini-2.5-flash", "input_tokens": 1000,
         "output_tokens": 250, "outcome": "ok", "latency_ms": 900},
    ]
    trace = tmp_path / "t.jsonl"
    trace.write_text("# two attempts of one call\n" + "\n".join(json.dumps(x) for x in lines) + "\n\n",
                     encoding="utf-8")
    run = replay_json(str(trace), "--policies", POLICIES)["runs"][0]
    # mini fails (as recorded), is retried once (server_error is retryable), then flash answers
    assert (run["calls"], run["successes"], run["attempts"], run["failovers"]) == (1, 1, 3, 1)
    assert run["served_by"] == {"gemini-2.5-flash": 1}
    assert run["tokens_in"] == 3000 and run["tokens_out"] == 250


def test_malformed_lines_are_reported_with_line_numbers_and_skipped(tmp_path: Path) -> None:
    rows = healthy_rows(3)
    rows.insert(1, f"{T0},L2,,many,300,ok,")  # line 3
    rows.insert(3, f"{T0},L9,,100,10,ok,")  # line 5
    rows.append(f"{T0},L2,,100")  # line 7
    rows.append("yesterday,L2,,100,10,ok,")  # line 8
    rows.append(f"{T0},L2,,100,10,exploded,")  # line 9
    trace = write_csv(tmp_path / "t.csv", rows)
    done = replay(str(trace), "--policies", POLICIES, "-q")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"{trace}:3: input_tokens: expected an integer >= 0, got 'many'",
        f"{trace}:5: unknown tier 'L9'; expected one of L1, L2, L3, L4",
        f"{trace}:7: expected 7 fields as in the header, got 4",
        f"{trace}:8: timestamp: expected ISO 8601 or epoch seconds, got 'yesterday'",
        f"{trace}:9: unknown outcome 'exploded' (did you mean 'overloaded'?); expected ok or one of auth, "
        "bad_request, cancelled, connection, content_policy, context_window, model_not_found, overloaded, "
        "quota_exhausted, rate_limit, server_error, timeout",
    ]
    assert "3 calls from 3 of 8 lines; 5 malformed lines SKIPPED (see stderr)" in done.stdout


def test_strict_makes_a_malformed_line_fatal(tmp_path: Path) -> None:
    trace = write_csv(tmp_path / "t.csv", [*healthy_rows(3), f"{T0},L2,,12,-4,ok,"])
    done = replay(str(trace), "--policies", POLICIES, "--strict")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [f"{trace}:5: output_tokens: expected an integer >= 0, got '-4'",
                                        "policy-engine replay: 1 malformed line (--strict): nothing replayed"]


def test_bad_json_lines_carry_their_line_number(tmp_path: Path) -> None:
    ok = json.dumps({"timestamp": T0, "tier": "L1", "input_tokens": 10, "output_tokens": 2})
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join([ok, "{broken", "[1, 2]", json.dumps({"timestamp": T0, "input_tokens": 1,
                                                                    "output_tokens": 1}), ok]), encoding="utf-8")
    done = replay(str(trace), "--policies", POLICIES, "-q")
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        f"{trace}:2: not valid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{trace}:3: expected a JSON object, got list",
        f"{trace}:4: expected a tier or a model, got neither",
    ]


@pytest.mark.parametrize(("setup", "args", "code", "message"), [
    (lambda p: None, ["--policies", POLICIES], 1, "cannot read the trace"),
    (lambda p: p.write_text("", encoding="utf-8"), ["--policies", POLICIES], 1, "the trace is empty"),
    (lambda p: p.write_text("a,b\n1,2\n", encoding="utf-8"), ["--policies", POLICIES], 1, "the CSV header names no"),
    (lambda p: write_csv(p, [f"{T0},L7,,1,1,ok,"]), ["--policies", POLICIES], 1, "no valid line to replay"),
    (lambda p: write_csv(p, healthy_rows(1)), [], 2, "the following arguments are required: --policies"),
    (lambda p: write_csv(p, healthy_rows(1)), ["--policies", "/nonexistent"], 2, "is not a policy directory"),
    (lambda p: write_csv(p, healthy_rows(1)), ["--policies", POLICIES, "--format", "xml"], 2, "invalid choice"),
])
def test_unusable_input_exits_1_and_usage_errors_exit_2(tmp_path: Path, setup, args: list[str], code: int,  # type: ignore[no-untyped-def]
                                                        message: str) -> None:
    trace = tmp_path / "t.csv"
    setup(trace)
    done = replay(str(trace), *args)
    assert done.returncode == code, done.stderr
    assert message in done.stderr and "replay:" not in done.stdout


# -- comparing ------------------------------------------------------------------------------------
def test_compare_prints_two_columns_and_when_each_budget_ran_out(tmp_path: Path) -> None:
    small = policy_copy(tmp_path, "small-gpt5", ("budgets.yaml", "tokens: 8000000", "tokens: 40000"))
    trace = write_csv(tmp_path / "t.csv", [f"{T0 + 10 * i:.3f},L4,,3000,1000,ok,20000" for i in range(30)])
    done = replay(str(trace), "--policies", POLICIES, "--compare", str(small), "-q")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if "small-gpt5" in line and "policies" in line)
    assert header.split() == ["policies", "small-gpt5"]
    row = next(line for line in lines if line.strip().startswith("budget gpt-5-daily exhausted"))
    # the 10th call of 4,000 tokens (arriving 10:01:30) spends the 40,000; it settles 20 s later
    assert row.split()[-2:] == ["-", "10:01:50"]
    data = replay_json(str(trace), "--policies", POLICIES, "--compare", str(small))
    a, b = data["runs"]
    assert a["served_by"] == {"gpt-5": 30} and b["served_by"]["gpt-5"] == 10
    assert a["availability"] == b["availability"] == 1.0


def test_recorded_failures_steer_the_replay_and_the_compare_set_avoids_them(tmp_path: Path) -> None:
    flash_first = policy_copy(tmp_path, "flash-first", (
        "routing.yaml", "[gpt-4.1-mini, gemini-2.5-flash,", "[gemini-2.5-flash, gpt-4.1-mini,"))
    rows = [f"{T0 + i:.3f},L2,gpt-4.1-mini,1000,0,server_error,150" for i in range(0, 300, 2)]
    rows += [f"{T0 + i:.3f},L2,gemini-2.5-flash,1000,200,ok,800" for i in range(1, 300, 2)]
    trace = write_csv(tmp_path / "t.csv", rows)
    a, b = replay_json(str(trace), "--policies", POLICIES, "--compare", str(flash_first))["runs"]
    assert a["calls"] == b["calls"] == 300 and a["availability"] == b["availability"] == 1.0
    assert a["breaker_trips"].get("gpt-4.1-mini", 0) >= 1 and b["breaker_trips"] == {}
    assert a["attempts"] > b["attempts"] == 300 and a["tokens_per_success"] > b["tokens_per_success"]


# -- round trips and converters ------------------------------------------------------------------
def test_a_trace_recorded_by_simulate_replays_to_the_same_run(tmp_path: Path) -> None:
    trace = tmp_path / "rec.jsonl"
    sim = subprocess.run([sys.executable, "-c", SIMULATE, "--start-hour", "10", "--hours", "0.5", "--scale", "0.1",
                          "--history", "none", "--json", "-q", "--record-trace", str(trace)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert sim.returncode == 0, sim.stderr
    engine = json.loads(sim.stdout)["engine"]
    run = replay_json(str(trace), "--policies", POLICIES)["runs"][0]
    for key in ("calls", "successes", "attempts", "failovers", "breaker_trips", "served_by", "tokens_in",
                "tokens_out"):
        assert run[key] == engine[key], key


def test_the_engines_history_replays(tmp_path: Path) -> None:
    pytest.importorskip("engine.store.sqlite", reason="the SQLite history store is not in this build")
    sim = subprocess.run([sys.executable, "-c", SIMULATE, "--start-hour", "10", "--hours", "0.5", "--scale", "0.1",
                          "--no-report", "--json", "-q"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         check=False)
    assert sim.returncode == 0, sim.stderr
    d = json.loads(sim.stdout)
    db = tmp_path / d["history"]
    got = replay_json(str(db), "--policies", POLICIES)
    run = got["runs"][0]
    assert got["format"] == "history" and got["malformed"] == []
    # every recorded attempt comes back; failed attempts join the fallback successes of their minute
    assert run["attempts"] >= d["engine"]["attempts"] * 0.95
    assert abs(run["calls"] - d["requests"]) <= d["requests"] * 0.02
    assert run["availability"] >= 0.999


@pytest.mark.skipif(not AZURE_CONV.is_file(), reason="../shared/traces is not here")
def test_the_azure_trace_is_read_directly_and_converts_to_the_trace_format(tmp_path: Path) -> None:
    trace = read_trace(AZURE_CONV)
    assert trace.format == "azure" and len(trace.lines) == trace.read == 19_366 and not trace.problems
    assert {ln.tier for ln in trace.lines} == {"L2", "L3", "L4"}
    assert trace.lines[0].input_tokens == 374 and trace.lines[0].output_tokens == 44
    out = tmp_path / "conv.csv"
    done = subprocess.run([sys.executable, "-m", "engine.cli.convert", str(AZURE_CONV), "-o", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    back = read_trace(out)
    assert back.format == "trace-csv" and len(back.lines) == 19_366
    assert [(ln.tier, ln.input_tokens, ln.output_tokens) for ln in back.lines[:50]] == \
        [(ln.tier, ln.input_tokens, ln.output_tokens) for ln in trace.lines[:50]]
    assert abs(back.lines[-1].timestamp - trace.lines[-1].timestamp) < 1e-5


@pytest.mark.skipif(not LLMPERF.is_file(), reason="../shared/traces is not here")
def test_the_llmperf_trace_keeps_its_failures_on_their_models(tmp_path: Path) -> None:
    trace = read_trace(LLMPERF)
    assert trace.format == "llmperf" and len(trace.lines) == 2_845 and not trace.problems
    outcomes: dict[str | None, int] = {}
    for ln in trace.lines:
        outcomes[ln.outcome] = outcomes.get(ln.outcome, 0) + 1
    assert outcomes == {None: 2_845 - 392 - 147, "rate_limit": 392, "server_error": 147}
    assert {ln.model for ln in trace.lines if ln.outcome == "rate_limit"} == {"gemini-2.5-flash", "gpt-4.1"}
    done = replay(str(LLMPERF), "--policies", POLICIES, "-q")
    assert done.returncode == 0 and "2,845 calls" in done.stdout



def test_an_unknown_model_is_a_line_problem_with_or_without_a_tier(tmp_path: Path) -> None:
    rows = [*healthy_rows(2), f"{T0 + 10},L2,openai/gpt-4.1-mini,100,0,server_error,50",
            f"{T0 + 11},,openai/gpt-4.1-mini,100,0,server_error,50"]
    trace = write_csv(tmp_path / "t.csv", rows)
    done = replay(str(trace), "--policies", POLICIES, "-q")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"{trace}:4: unknown model 'openai/gpt-4.1-mini' (did you mean 'gpt-4.1-mini'?): "
        "its recorded outcomes would never apply",
        f"{trace}:5: unknown model 'openai/gpt-4.1-mini' (did you mean 'gpt-4.1-mini'?) and no tier: "
        "cannot tell which tier to call"]
    strict = replay(str(trace), "--policies", POLICIES, "--strict")
    assert strict.returncode == 1 and strict.stdout == "" and f"{trace}:4: unknown model" in strict.stderr
    # a model only the --compare set knows is not a problem
    other = policy_copy(tmp_path, "other", ("models.yaml", "gpt-4.1-mini:", "gpt-4.1-mini-2:"))
    (other / "routing.yaml").write_text((other / "routing.yaml").read_text(encoding="utf-8").replace(
        "gpt-4.1-mini,", "gpt-4.1-mini-2,").replace("gpt-4.1-mini]", "gpt-4.1-mini-2]"), encoding="utf-8")
    known = write_csv(tmp_path / "k.csv", [*healthy_rows(2), f"{T0 + 10},L2,gpt-4.1-mini-2,100,0,server_error,50"])
    both = replay(str(known), "--policies", POLICIES, "--compare", str(other), "-q")
    assert both.returncode == 0 and both.stderr == "", both.stderr


@pytest.mark.parametrize(("value", "message"), [
    ("1767261600000", "timestamp: expected a time in the years 1970-9998, got '1767261600000'; "
                      "it looks like milliseconds: divide by 1000"),
    ("1e300", "timestamp: expected a time in the years 1970-9998, got '1e300'"),
    ("0001-01-01T00:00:00+05:00", "timestamp: expected a time in the years 1970-9998"),
    ("-5", "timestamp: expected a time in the years 1970-9998, got '-5'"),
    # accepted once, then the replay's budget periods (next local month) ran past year 9999: OverflowError
    ("253402300000", "timestamp: expected a time in the years 1970-9998, got '253402300000'"),
    ("9999-12-31T00:00:00Z", "timestamp: expected a time in the years 1970-9998"),
])
def test_timestamps_outside_1970_to_9998_are_line_problems(tmp_path: Path, value: str, message: str) -> None:
    trace = write_csv(tmp_path / "t.csv", [*healthy_rows(2), f"{value},L2,,100,10,ok,"])
    done = replay(str(trace), "--policies", POLICIES, "-q")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"{trace}:4: {message}"] or done.stderr.startswith(f"{trace}:4: {message}")
    assert "Traceback" not in done.stderr


def test_the_first_and_last_accepted_times_replay_even_at_utc_plus_14(tmp_path: Path) -> None:
    east = policy_copy(tmp_path, "kiritimati", ("budgets.yaml", "timezone: Europe/Berlin",
                                                "timezone: Pacific/Kiritimati"))
    trace = write_csv(tmp_path / "t.csv", ["9998-12-31T23:59:59Z,L2,,100,10,ok,", "0,L4,,100,10,server_error,"])
    done = replay(str(trace), "--policies", POLICIES, "--compare", str(east), "-q")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "2 calls from 2 of 2 lines" in done.stdout


def test_an_azure_row_dated_9999_12_31_is_a_line_problem(tmp_path: Path) -> None:
    trace = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                     "9999-12-31 23:59:59.0000000,100,10\n", encoding="utf-8")
    done = replay(str(trace), "--policies", POLICIES, "-q")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"{trace}:3: timestamp: expected a time in the years 1970-9998, got '9999-12-31 23:59:59.0000000'"]
    assert "1 calls from 1 of 2 lines" in done.stdout or "1 call from 1 of 2 lines" in done.stdout


def test_a_history_minute_past_9998_is_a_line_problem(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "history.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE minutes (minute INTEGER, tier TEXT, model TEXT, calls INTEGER, successes INTEGER, "
                 "fallbacks INTEGER, tokens_in INTEGER, tokens_out INTEGER, errors TEXT)")
    good, bad = int(T0 // 60), 253402300799 // 60
    conn.executemany("INSERT INTO minutes VALUES (?, 'L2', 'gpt-4.1-mini', 2, 2, 0, 200, 20, '{}')",
                     [(good,), (bad,)])
    conn.commit()
    conn.close()
    done = replay(str(db), "--policies", POLICIES, "-q")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"{db}:2: minute {bad} tier 'L2' model 'gpt-4.1-mini': timestamp: expected a "
                                        f"time in the years 1970-9998, got {bad * 60}"]
    assert "Traceback" not in done.stderr


def test_a_csv_field_over_the_csv_limit_is_a_line_problem(tmp_path: Path) -> None:
    trace = write_csv(tmp_path / "t.csv", [*healthy_rows(2)])
    with trace.open("a", encoding="utf-8") as f:
        f.write(f'{T0 + 9},"{"x" * 200_000}",,100,10,ok,\n{T0 + 20},L2,,100,10,ok,\n')
    done = replay(str(trace), "--policies", POLICIES, "-q")
    assert done.returncode == 0, done.stderr
    # the line is over the 64 KiB line limit before its field is over the CSV module's (converters below)
    assert done.stderr.splitlines() == [
        f"{trace}:4: line too long: over 65,536 bytes (64 KiB), the most a trace line may have"]
    assert "3 calls from 3 of 4 lines" in done.stdout
    strict = replay(str(trace), "--policies", POLICIES, "--strict")
    assert strict.returncode == 1 and "Traceback" not in strict.stderr


def test_the_converters_report_an_oversized_csv_field_as_a_line_problem() -> None:
    import io

    from engine.sim import convert as sim_convert

    big = "x" * 200_000
    lines, problems, _ = sim_convert.azure(io.StringIO(
        f'TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"{big}",1,1\n'
        "2023-11-16 18:15:50.9951690,396,109\n"), name="conv")
    assert len(lines) == 2 and [(p.line, p.message) for p in problems] == [
        (3, "malformed CSV: field larger than field limit (131072)")]
    lines, problems, _ = sim_convert.llmperf(io.StringIO(
        "run,seq,error_code,end_to_end_latency_s,number_input_tokens,number_output_tokens\n"
        f'groq_70b,1,,1.0,100,10\ngroq_70b,2,"{big}",1.0,100,10\n'))
    assert len(lines) == 1 and [p.line for p in problems] == [3]
    assert problems[0].message.startswith("malformed CSV: field larger than field limit")


# -- bounded reading: streams, pipes, hostile lines ---------------------------------------------
def jsonl_rows(n: int, tier: str = "L2") -> list[str]:
    return [json.dumps({"timestamp": T0 + i, "tier": tier, "input_tokens": 1200, "output_tokens": 300})
            for i in range(n)]


def limited_replay(*args: str, memory: int = 1 << 30, bash: str | None = None,
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``replay`` in a process that may map at most ``memory`` bytes (a read of the whole input would fail);
    with ``bash``, a bash command line that runs ``"$0" -m engine replay ...`` (process substitution), $0
    being this Python and $1... ``args``."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    cmd = ["bash", "-c", bash, sys.executable, *args] if bash else \
        [sys.executable, "-m", "engine", "replay", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, preexec_fn=cap)


def test_replay_of_dev_zero_reads_one_line_limit_and_says_it_is_not_a_trace() -> None:
    import time

    t = time.perf_counter()
    done = limited_replay("/dev/zero", "--policies", POLICIES, "-q", timeout=30)
    took = time.perf_counter() - t
    assert done.returncode == 1, done.stderr
    assert done.stderr == ("policy-engine replay: /dev/zero:1: a line longer than 64 KiB before any record: not a "
                           "trace (CSV or JSONL, one line per call)\n")
    assert took < 10, took


def test_a_line_over_64_kib_is_a_line_problem_read_in_bounded_memory(tmp_path: Path) -> None:
    first, last = jsonl_rows(2)
    # a 300 MB line through a pipe, in a process allowed 1 GiB of address space: it is never held whole
    done = limited_replay(first, last, "--policies", POLICIES, "-q", bash=(
        'exec "$0" -m engine replay <(echo "$1"; head -c 300000000 /dev/zero | tr "\\0" x; echo; echo "$2") '
        '"${@:3}"'))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "/dev/fd/63:2: line too long: over 65,536 bytes (64 KiB), the most a trace line may have"]
    assert "2 calls from 2 of 3 lines; 1 malformed line SKIPPED" in done.stdout
    # in a file, a line just over the limit is reported and one at it is read
    trace = tmp_path / "t.jsonl"
    pad = 65_536 - len(first) - len(', "x": ""}\n')
    at_limit = first[:-1] + f', "x": "{"y" * pad}"}}'
    trace.write_text("\n".join([first, at_limit, at_limit[:-2] + 'yy"}', last]) + "\n", encoding="utf-8")
    done = replay(str(trace), "--policies", POLICIES, "-q")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"{trace}:3: line too long: over 65,536 bytes (64 KiB), the most a trace line may have"]
    assert "3 calls from 3 of 4 lines" in done.stdout
    strict = replay(str(trace), "--policies", POLICIES, "--strict")
    assert strict.returncode == 1 and f"{trace}:3: line too long" in strict.stderr


def test_a_deeply_nested_json_line_is_a_line_problem(tmp_path: Path) -> None:
    first, last = jsonl_rows(2)
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join([first, '{"timestamp": ' + "[" * 60_000, '{"a": "[[[[' + "[" * 100 + '"}',
                                last]) + "\n", encoding="utf-8")
    done = replay(str(trace), "--policies", POLICIES, "-q")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"{trace}:2: JSON nested deeper than 64 levels: a trace line is one flat JSON object",
        f"{trace}:3: expected a tier or a model, got neither"]  # brackets in a string are text
    assert "Traceback" not in done.stderr and "2 calls from 2 of 4 lines" in done.stdout


@pytest.mark.parametrize("kind", ["jsonl", "csv", "azure"])
def test_a_trace_from_a_pipe_loses_no_line(tmp_path: Path, kind: str) -> None:
    if kind == "jsonl":
        text = "\n".join(jsonl_rows(1000)) + "\n"
    elif kind == "csv":
        text = write_csv(tmp_path / "t.csv", healthy_rows(1000)).read_text(encoding="utf-8").replace("\n", "\r\n")
    else:
        text = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
            f"2023-11-16 18:{i // 60:02d}:{i % 60:02d}.5000000,374,44\n" for i in range(1000))
    trace = tmp_path / "t.txt"
    trace.write_text(text, encoding="utf-8")
    done = limited_replay(str(trace), "--policies", POLICIES, "-q", bash='exec "$0" -m engine replay <(cat "$1") '
                                                                         '"${@:2}"')
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    fmt = {"jsonl": "trace-jsonl", "csv": "trace-csv", "azure": "azure"}[kind]
    assert done.stdout.startswith(f"replay: /dev/fd/63 ({fmt}): 1,000 calls from 1,000 of 1,000 lines"), done.stdout


def test_a_history_database_from_a_pipe_is_refused_with_what_to_do(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    import sqlite3

    sqlite3.connect(db).execute("CREATE TABLE minutes (minute INTEGER)").connection.close()
    done = limited_replay(str(db), "--policies", POLICIES, "-q", bash='exec "$0" -m engine replay <(cat "$1") '
                                                                      '"${@:2}"')
    assert done.returncode == 1
    assert done.stderr == ("policy-engine replay: /dev/fd/63: an SQLite history database, which is read from a "
                           "file, not a pipe: give its path\n")

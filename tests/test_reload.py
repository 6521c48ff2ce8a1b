"""Hot reload through the real watchdog observers, on real files, with bounded waits.

Each save pattern is the sequence of file operations a real editor performs.
Tests wait for what they expect with a deadline (a condition notified by the
engine's events and the watcher's results), never with a sleep; the sleeps
that remain model an editor pausing between two writes.
"""

from __future__ import annotations

import errno
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from watchdog.observers import Observer

import engine.reload as reload_mod
from engine import Outcome, PolicyEngine
from engine.events import Event, PolicyReloaded, ReloadFailed
from engine.policy.loader import check
from engine.reload import PolicyWatcher, needs_polling, watch

WAIT_S = 10.0  # a deadline, not a delay: every wait returns as soon as its condition holds
OK = Outcome(latency_ms=800.0, input_tokens=900, output_tokens=100)
MODES = ["inotify", "polling"]


class Seen:
    """Reload events and watcher results, with bounded waits on them."""

    def __init__(self, eng: PolicyEngine) -> None:
        self.eng = eng
        self.events: list[Event] = []
        self.results: list[tuple[bool, dict[str, Any]]] = []
        self.cond = threading.Condition()
        eng.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, (PolicyReloaded, ReloadFailed)):
            with self.cond:
                self.events.append(event)
                self.cond.notify_all()

    def on_result(self, changed: bool, status: dict[str, Any]) -> None:
        with self.cond:
            self.results.append((changed, status))
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        with self.cond:
            ok = self.cond.wait_for(predicate, WAIT_S)
        assert ok, f"timed out waiting for {what}; events={self.events} status={self.eng.reload_status()}"

    def of(self, kind: type[Event]) -> list[Any]:
        with self.cond:
            return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def eng(policy_dir: Path) -> Iterator[PolicyEngine]:
    engine = PolicyEngine.from_path(policy_dir)
    yield engine
    engine.close()


@pytest.fixture
def seen(eng: PolicyEngine) -> Seen:
    return Seen(eng)


@pytest.fixture
def start(eng: PolicyEngine, seen: Seen) -> Iterator[Callable[..., PolicyWatcher]]:
    """Start a watcher on ``eng`` in a mode ("inotify" or "polling"); stopped at teardown."""
    started: list[PolicyWatcher] = []

    def run(mode: str, **kw: Any) -> PolicyWatcher:
        kw.setdefault("poll_interval_s", 0.1)
        watcher = PolicyWatcher(eng, None, poll=mode == "polling", on_result=seen.on_result, **kw).start()
        started.append(watcher)
        assert watcher.mode == mode
        return watcher

    yield run
    for watcher in started:
        watcher.stop()


# -- how editors save --------------------------------------------------------------
def in_place(path: Path, text: str) -> None:
    """nano, VS Code's default, most scripts: truncate and write the same inode."""
    with open(path, "w") as f:
        f.write(text)


def rename_over(path: Path, text: str) -> None:
    """Atomic writers (VS Code's atomic save, atomicwrites, Go's renameio): temp file, rename over."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def vim(path: Path, text: str) -> None:
    """vim with writebackup (backupcopy=no): rename the original away, write anew, drop the backup."""
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    path.write_text(text)
    backup.unlink()


def jetbrains(path: Path, text: str) -> None:
    """JetBrains "safe write": write a temp file, move the original aside, move the temp in, delete."""
    tmp, old = path.with_name(path.name + "___jb_tmp___"), path.with_name(path.name + "___jb_old___")
    tmp.write_text(text)
    os.rename(path, old)
    os.rename(tmp, path)
    old.unlink()


def delete_then_create(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text)


SAVES = [in_place, rename_over, vim, jetbrains, delete_then_create]


def edited(path: Path, old: str, new: str) -> str:
    text = path.read_text()
    assert old in text, old
    return text.replace(old, new, 1)


# -- save patterns, in both modes -----------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("save", SAVES, ids=lambda f: f.__name__)
def test_each_save_pattern_takes_effect(mode: str, save: Callable[[Path, str], None], eng: PolicyEngine,
                                        seen: Seen, start: Callable[..., PolicyWatcher],
                                        policy_dir: Path) -> None:
    before = eng.policy.revision
    start(mode)
    report = policy_dir / "report.yaml"
    save(report, edited(report, "top_models: 10", "top_models: 7"))
    seen.wait(lambda: eng.policy.report.top_models == 7, "top_models 7")
    assert eng.policy.revision == check(policy_dir)[0].revision != before  # type: ignore[union-attr]
    assert seen.of(PolicyReloaded)[-1].revision == eng.policy.revision
    if save is rename_over:  # atomic: no reader ever sees a half-written or missing file
        assert seen.of(ReloadFailed) == []


def _configmap(root: Path, source: Path, stamp: str) -> None:
    """Write the files under a new timestamped directory and swap ``..data`` to it, as the kubelet does."""
    shutil.copytree(source, root / stamp)
    os.symlink(stamp, root / "..data_tmp")
    os.replace(root / "..data_tmp", root / "..data")


@pytest.mark.parametrize("mode", MODES)
def test_configmap_symlink_swap(mode: str, tmp_path: Path, policy_dir: Path) -> None:
    root = tmp_path / "configmap"
    root.mkdir()
    _configmap(root, policy_dir, "..2026_01_01_00_00_00.000000001")
    for f in sorted(policy_dir.iterdir()):
        os.symlink(f"..data/{f.name}", root / f.name)
    eng = PolicyEngine.from_path(root)
    seen = Seen(eng)
    with PolicyWatcher(eng, None, poll=mode == "polling", poll_interval_s=0.1, on_result=seen.on_result) as w:
        assert w.mode == mode
        swaps = [("top_models: 10", "top_models: 7"), ("top_models: 7", "top_models: 3")]
        for n, (old, new) in enumerate(swaps):
            next_version = tmp_path / f"v{n}"
            shutil.copytree(root / "..data", next_version)
            (next_version / "report.yaml").write_text(edited(next_version / "report.yaml", old, new))
            previous = os.readlink(root / "..data")
            _configmap(root, next_version, f"..2026_01_01_00_00_0{n + 1}.000000001")
            shutil.rmtree(root / previous)
            want = int(new.split()[-1])
            seen.wait(lambda want=want: eng.policy.report.top_models == want, f"top_models {want}")  # type: ignore[misc]
    assert seen.of(ReloadFailed) == []
    eng.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_new_file_takes_effect_and_a_removed_one_too(mode: str, eng: PolicyEngine, seen: Seen,
                                                        start: Callable[..., PolicyWatcher],
                                                        policy_dir: Path) -> None:
    start(mode)
    rule = ("kind: recommendations\nversion: 1\nrules:\n  watch-test:\n    scope: global\n"
            "    when: \"calls > 1\"\n    severity: info\n    message: \"many calls\"\n")
    rename_over(policy_dir / "extra.yaml", rule)
    seen.wait(lambda: "watch-test" in {r.name for r in eng.policy.recommendations}, "the added rule")
    added = len(eng.policy.recommendations)
    (policy_dir / "recommendations.yaml").unlink()
    seen.wait(lambda: len(eng.policy.recommendations) == 1, "only the added rule left")
    assert added == 7 and eng.policy.files == tuple(map(str, check(policy_dir)[0].files))  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", MODES)
def test_a_hundred_rapid_saves_end_on_the_final_content(mode: str, eng: PolicyEngine, seen: Seen,
                                                         start: Callable[..., PolicyWatcher],
                                                         policy_dir: Path) -> None:
    start(mode)
    report = policy_dir / "report.yaml"
    text = report.read_text()
    for i in range(1, 101):
        in_place(report, text.replace("top_models: 10", f"top_models: {i}"))
    seen.wait(lambda: eng.policy.report.top_models == 100, "the final save")
    assert eng.reload_status()["attempts"] < 20


@pytest.mark.parametrize("mode", MODES)
def test_invalid_save_keeps_the_last_good_set_then_the_fix_wins(mode: str, eng: PolicyEngine, seen: Seen,
                                                                 start: Callable[..., PolicyWatcher],
                                                                 policy_dir: Path) -> None:
    before = eng.policy
    start(mode)
    report = policy_dir / "report.yaml"
    good = report.read_text()
    in_place(report, good.replace("top_models: 10", "top_models: -3"))
    seen.wait(lambda: bool(seen.of(ReloadFailed)), "ReloadFailed")
    [failed] = seen.of(ReloadFailed)
    assert failed.kept == before.revision and eng.policy is before
    assert [p.format() for p in failed.problems] == [
        f"{report}:10:13: out-of-range: expected a number >= 1, got -3"]
    status = eng.reload_status()
    assert status["last_error"] == [failed.problems[0].format()] and status["revision"] == before.revision
    assert eng.decide("L2").model == "gpt-4.1-mini"  # the last good set still decides
    in_place(report, good.replace("top_models: 10", "top_models: 4"))
    seen.wait(lambda: eng.policy.report.top_models == 4, "the fix")
    assert eng.reload_status()["last_error"] is None


@pytest.mark.parametrize("mode", MODES)
def test_a_save_that_changes_nothing_swaps_nothing(mode: str, eng: PolicyEngine, seen: Seen,
                                                   start: Callable[..., PolicyWatcher],
                                                   policy_dir: Path) -> None:
    policy = eng.policy
    start(mode)
    report = policy_dir / "report.yaml"
    in_place(report, report.read_text())
    seen.wait(lambda: len(seen.results) >= 1, "a reload attempt")
    rename_over(report, report.read_text())
    seen.wait(lambda: len(seen.results) >= 2, "a second reload attempt")
    assert [(changed, status["failed"]) for changed, status in seen.results] == [(False, False)] * 2
    assert eng.policy is policy and seen.events == []


# -- half-written files and lost events ----------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_half_written_file_never_takes_effect(mode: str, eng: PolicyEngine, seen: Seen,
                                                start: Callable[..., PolicyWatcher],
                                                policy_dir: Path) -> None:
    """A slow writer: the watcher reloads in the middle of the save and must keep the last good set."""
    before = eng.policy.revision
    start(mode)
    report = policy_dir / "report.yaml"
    text = report.read_text().replace("top_models: 10", "top_models: 6")
    cut = text.index("top_models") + 5  # "top_m": a key without its colon does not parse
    with open(report, "w") as f:
        f.write(text[:cut])
        f.flush()
        seen.wait(lambda: bool(seen.of(ReloadFailed)), "the half-written file to be rejected")
        assert eng.policy.revision == before
        assert seen.of(ReloadFailed)[0].problems[0].code == "yaml-syntax"
        f.write(text[cut:])
    seen.wait(lambda: eng.policy.report.top_models == 6, "the completed save")
    assert [e.revision for e in seen.of(PolicyReloaded)] == [eng.policy.revision]


def test_inotify_waits_for_a_file_being_written_to_be_closed(eng: PolicyEngine, seen: Seen,
                                                             start: Callable[..., PolicyWatcher],
                                                             policy_dir: Path) -> None:
    start("inotify", debounce_s=0.05, max_delay_s=WAIT_S)
    report = policy_dir / "report.yaml"
    text = report.read_text().replace("top_models: 10", "top_models: 5")
    cut = text.index("top_models") + 5
    with open(report, "w") as f:
        f.write(text[:cut])
        f.flush()
        threading.Event().wait(0.3)  # the editor pauses mid-save for six debounce periods
        f.write(text[cut:])
    seen.wait(lambda: eng.policy.report.top_models == 5, "the completed save")
    assert seen.of(ReloadFailed) == [] and [c for c, _ in seen.results] == [True]


def test_a_change_missed_by_the_observer_is_caught_by_the_settle_check(
        eng: PolicyEngine, seen: Seen, policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The observer reports nothing (events lost); a write lands just after a failed reload read the files."""
    monkeypatch.setattr(reload_mod, "Observer", lambda: reload_mod.PollingObserver(timeout=3600))
    report = policy_dir / "report.yaml"
    good = report.read_text()

    def finish_the_save(changed: bool, status: dict[str, Any]) -> None:
        if status["failed"] and not report.read_text().endswith("top_models: 8\n"):
            in_place(report, good.replace("top_models: 10", "top_models: 8"))
        seen.on_result(changed, status)

    with PolicyWatcher(eng, None, poll=None, debounce_s=0.05, on_result=finish_the_save) as w:
        in_place(report, good.replace("top_models: 10", "top_models: 0"))
        w.notify()
        seen.wait(lambda: eng.policy.report.top_models == 8, "the write after the failed read")
    assert [(c, s["failed"]) for c, s in seen.results] == [(False, True), (True, False)]


def test_the_fingerprint_of_a_huge_file_reads_little_and_still_sees_changes(tmp_path: Path) -> None:
    """The settle check fingerprints the files every quiet period: a 3 GiB file must not be read whole."""
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as f:
        f.truncate(3 << 30)
    tracemalloc.start()
    try:
        first, _ = reload_mod._fingerprint([tmp_path])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak} bytes allocated to fingerprint a 3 GiB file"
    assert reload_mod._fingerprint([tmp_path])[0] == first
    mtime = huge.stat().st_mtime_ns
    with huge.open("r+b") as f:  # a change far past the size cap, same size
        f.seek((3 << 30) - 1)
        f.write(b"x")
    os.utime(huge, ns=(mtime + 10**9, mtime + 10**9))
    second, _ = reload_mod._fingerprint([tmp_path])
    assert second != first
    with huge.open("r+b") as f:  # a different size
        f.truncate((3 << 30) + 1)
    os.utime(huge, ns=(mtime + 10**9, mtime + 10**9))
    assert reload_mod._fingerprint([tmp_path])[0] not in (first, second)


# -- the watcher's own life ------------------------------------------------------------
def test_falls_back_to_polling_when_inotify_cannot_start(eng: PolicyEngine, seen: Seen, policy_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    class Exhausted(Observer):  # type: ignore[misc,valid-type]
        def start(self) -> None:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    threads = set(threading.enumerate())
    monkeypatch.setattr(reload_mod, "Observer", Exhausted)
    with pytest.raises(OSError, match="watch limit"):
        PolicyWatcher(eng, None, poll=False).start()
    with PolicyWatcher(eng, None, poll_interval_s=0.1, on_result=seen.on_result) as w:
        assert w.mode == "polling"
        report = policy_dir / "report.yaml"
        in_place(report, edited(report, "top_models: 10", "top_models: 9"))
        seen.wait(lambda: eng.policy.report.top_models == 9, "a reload by polling")
    assert set(threading.enumerate()) == threads  # the inotify instance opened for nothing was closed


def test_network_file_systems_are_polled() -> None:
    mounts = ("/dev/vda / ext4 rw 0 0\nserver:/export /mnt/nfs nfs4 rw 0 0\n"
              "//srv/share /mnt/my\\040share cifs rw 0 0\ntmpfs /mnt/nfs/cache tmpfs rw 0 0\n")
    assert needs_polling("/mnt/nfs/policies", mounts) is True
    assert needs_polling("/mnt/my share/policies", mounts) is True
    assert needs_polling("/mnt/nfs/cache/policies", mounts) is False  # the deeper mount wins
    assert needs_polling("/mnt/nfsx", mounts) is False
    assert needs_polling("/etc", mounts) is False


@pytest.mark.parametrize("mode", MODES)
def test_stop_joins_every_thread_and_is_idempotent(mode: str, eng: PolicyEngine, seen: Seen,
                                                   policy_dir: Path) -> None:
    threads = set(threading.enumerate())
    w = PolicyWatcher(eng, None, poll=mode == "polling", poll_interval_s=0.1, on_result=seen.on_result)
    with w:
        assert w.is_alive() and len(set(threading.enumerate()) - threads) >= 2
        report = policy_dir / "report.yaml"
        in_place(report, edited(report, "top_models: 10", "top_models: 2"))
        seen.wait(lambda: eng.policy.report.top_models == 2, "a reload")
    assert not w.is_alive() and set(threading.enumerate()) == threads
    w.stop()
    w.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        w.start()


def test_watch_starts_a_native_watcher_and_the_context_stops_it(eng: PolicyEngine, seen: Seen,
                                                                policy_dir: Path) -> None:
    threads = set(threading.enumerate())
    with watch(eng, debounce_s=0.02) as w:
        assert w.mode == "inotify" and w.is_alive()
        breakers = policy_dir / "breakers.yaml"
        rename_over(breakers, edited(breakers, "failure_rate: 0.5", "failure_rate: 0.25"))
        seen.wait(lambda: eng.policy.models["gpt-4.1"].breaker.failure_rate == 25, "failure_rate 25")
    assert set(threading.enumerate()) == threads


@pytest.mark.skipif(not hasattr(PolicyEngine, "watch"), reason="PolicyEngine.watch is wired in core")
def test_engine_watch_method(eng: PolicyEngine, seen: Seen, policy_dir: Path) -> None:
    with eng.watch():  # type: ignore[attr-defined]
        report = policy_dir / "report.yaml"
        in_place(report, edited(report, "top_models: 10", "top_models: 11"))
        seen.wait(lambda: eng.policy.report.top_models == 11, "top_models 11")


def test_breaker_state_carries_over_a_watched_reload(eng: PolicyEngine, seen: Seen,
                                                     start: Callable[..., PolicyWatcher],
                                                     policy_dir: Path) -> None:
    eng.force("gpt-4.1-mini", "open")
    start("inotify")
    report = policy_dir / "report.yaml"
    in_place(report, edited(report, "top_models: 10", "top_models: 12"))
    seen.wait(lambda: eng.policy.report.top_models == 12, "top_models 12")
    assert eng.state("gpt-4.1-mini")["breaker"]["state"] == "forced_open"
    assert eng.decide("L2").model == "gemini-2.5-flash"


def test_decisions_made_before_a_reload_are_recorded_after_it(eng: PolicyEngine, seen: Seen,
                                                              start: Callable[..., PolicyWatcher],
                                                              policy_dir: Path) -> None:
    held = eng.decide("L4", estimated_tokens=1500)
    start("inotify")
    breakers = policy_dir / "breakers.yaml"
    in_place(breakers, edited(breakers, "failure_rate: 0.5", "failure_rate: 0.3"))
    seen.wait(lambda: eng.policy.models["gpt-5"].breaker.failure_rate == 30, "failure_rate 30")
    eng.record(held, OK)
    state = eng.state(held.model)
    assert (state["in_flight"], state["metrics"]["calls"]) == (0, 1)
    assert (state["budgets"][0]["tokens_used"], state["budgets"][0]["tokens_reserved"]) == (1000, 0)


def test_on_result_reports_each_attempt(eng: PolicyEngine, seen: Seen, start: Callable[..., PolicyWatcher],
                                        policy_dir: Path) -> None:
    start("inotify")
    report = policy_dir / "report.yaml"
    in_place(report, edited(report, "top_models: 10", "top_models: 13"))
    seen.wait(lambda: len(seen.results) >= 1, "a result")
    changed, status = seen.results[0]
    assert changed is True and status["failed"] is False and status["revision"] == eng.policy.revision
    assert status["successes"] == 1 and 0 < status["duration_ms"] < WAIT_S * 1000


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="debounce_s"):
        PolicyWatcher(PolicyEngine.from_path(Path(__file__).parent.parent / "policies"), None, debounce_s=-1)


# -- policy-engine watch ---------------------------------------------------------------
class Proc:
    """``main_watch`` in a child process, its stdout read line by line with a deadline."""

    def __init__(self, *args: str, cwd: Path) -> None:
        code = "import sys; from engine.cli.watch import main_watch; sys.exit(main_watch(sys.argv[1:]))"
        self.p = subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self) -> str:
        try:
            got = self.lines.get(timeout=WAIT_S)
        except queue.Empty:
            self.p.kill()
            raise AssertionError("no output line in time") from None
        assert got is not None, f"stdout closed; exit {self.p.wait()}: {self.p.stderr.read()}"  # type: ignore[union-attr]
        return got

    def finish(self) -> int:
        try:
            return self.p.wait(timeout=WAIT_S)
        finally:
            self.p.kill()
            self.p.wait()
            self.reader.join(WAIT_S)
            self.p.stdout.close()  # type: ignore[union-attr]
            self.p.stderr.close()  # type: ignore[union-attr]


@pytest.mark.parametrize(("flags", "sig"), [((), signal.SIGTERM), (("--poll",), signal.SIGINT)])
def test_cli_prints_each_reload_and_stops_cleanly(flags: tuple[str, ...], sig: int, policy_dir: Path,
                                                  tmp_path: Path) -> None:
    proc = Proc(str(policy_dir), "--debounce-ms", "50", *flags, cwd=tmp_path)
    mode = "polling" if flags else "inotify"
    revision = check(policy_dir)[0].revision[:12]  # type: ignore[union-attr]
    stamp = r"\[\d\d:\d\d:\d\d\] "  # local wall-clock time
    assert re.fullmatch(stamp + re.escape(f"watching {policy_dir} ({mode}): revision {revision} (8 files)"),
                        proc.line())
    report = policy_dir / "report.yaml"
    good = report.read_text()
    rename_over(report, good.replace("top_models: 10", "top_models: 7"))
    revision = check(policy_dir)[0].revision[:12]  # type: ignore[union-attr]
    assert re.fullmatch(rf"{stamp}reloaded revision {revision} \(8 files\) in \d+ ms", proc.line())
    assert proc.line() == f"  files: changed {report}"
    assert proc.line() == "  models, tiers and budgets unchanged (other settings changed)"
    rename_over(report, good.replace("top_models: 10", "top_models: -1"))
    assert re.fullmatch(rf"{stamp}reload failed: 1 problem; revision {revision} stays in force", proc.line())
    assert proc.line() == f"{report}:10:13: out-of-range: expected a number >= 1, got -1"
    rename_over(report, good)  # fixed: a valid set takes effect after the failure
    assert re.fullmatch(rf"{stamp}reloaded revision [0-9a-f]{{12}} \(8 files\) in \d+ ms", proc.line())
    assert proc.line() == f"  files: changed {report}"
    assert proc.line() == "  models, tiers and budgets unchanged (other settings changed)"
    assert re.fullmatch(rf"{stamp}recovered: revision [0-9a-f]{{12}} is in force and valid again after "
                        r"1 failed reload", proc.line())
    proc.p.send_signal(sig)
    assert proc.finish() == 0


def test_cli_once_exits_after_the_first_reload(policy_dir: Path, tmp_path: Path) -> None:
    proc = Proc(str(policy_dir), "--once", cwd=tmp_path)
    assert proc.line()[11:].startswith("watching ")
    report = policy_dir / "report.yaml"
    rename_over(report, edited(report, "top_models: 10", "top_models: 7"))
    assert proc.line()[11:].startswith("reloaded revision ")
    assert proc.finish() == 0


def test_cli_refuses_an_invalid_set(policy_dir: Path, tmp_path: Path) -> None:
    report = policy_dir / "report.yaml"
    report.write_text(edited(report, "top_models: 10", "top_models: 0"))
    proc = Proc(str(policy_dir), cwd=tmp_path)
    assert proc.line() == f"{report}:10:13: out-of-range: expected a number >= 1, got 0"
    assert proc.finish() == 1


def test_cli_usage_error(tmp_path: Path) -> None:
    proc = Proc("--debounce-ms", "soon", cwd=tmp_path)
    assert proc.finish() == 2


def test_cli_prints_the_warnings_of_a_set_it_takes(policy_dir: Path, tmp_path: Path) -> None:
    proc = Proc(str(policy_dir), "--once", cwd=tmp_path)
    assert proc.line()[11:].startswith("watching ")  # after the local time, [HH:MM:SS]
    routing = policy_dir / "routing.yaml"
    rename_over(routing, edited(routing, "[gpt-5, claude-opus-4-1, o3]", "[gpt-5, claude-opus-4-1]"))
    assert proc.line()[11:].startswith("reloaded revision ")  # a warning never stops a reload
    line = (policy_dir / "models.yaml").read_text().splitlines().index("  o3:") + 1
    shown = proc.line()
    while shown.startswith("  "):  # what changed: files, models, tiers, budgets
        shown = proc.line()
    assert shown == (f"{policy_dir / 'models.yaml'}:{line}:3: unreachable-model: model 'o3' is not a "
                           "candidate of any tier; add it to a tier's candidates or remove it (warning)")
    assert proc.finish() == 0


def test_cli_says_which_models_tiers_and_budgets_a_reload_changed(policy_dir: Path) -> None:
    from engine.cli.watch import changes

    before = check(policy_dir)[0]
    models = policy_dir / "models.yaml"
    models.write_text(models.read_text().replace("max_in_flight: 256", "max_in_flight: 200", 1))
    budgets = policy_dir / "budgets.yaml"
    budgets.write_text(budgets.read_text().replace("tokens: 8000000", "tokens: 9000000"))
    after = check(policy_dir)[0]
    assert before is not None and after is not None
    lines = changes(before, after, {str(models): "a", str(budgets): "b", "gone.yaml": "c"},
                    {str(models): "a2", str(budgets): "b2", "new.yaml": "d"})
    assert lines == [f"  files: added new.yaml; removed gone.yaml; changed {budgets}, {models}",
                     "  models: changed gpt-4.1-nano", "  budgets: changed gpt-5-daily"]


def test_a_valid_set_after_failed_reloads_emits_reload_recovered(policy_dir: Path) -> None:
    from engine.events import ReloadFailed, ReloadRecovered

    eng = PolicyEngine.from_path(policy_dir)
    events: list[Event] = []
    eng.subscribe(events.append)
    report = policy_dir / "report.yaml"
    good = report.read_text()
    report.write_text(good.replace("top_models: 10", "top_models: -1"))
    assert eng.reload() is False and eng.reload() is False
    report.write_text(good)  # reverted: the set in force never changed, and it is valid again
    assert eng.reload() is False
    failed = [e for e in events if isinstance(e, ReloadFailed)]
    (recovered,) = [e for e in events if isinstance(e, ReloadRecovered)]
    assert (recovered.revision, recovered.failures, recovered.failing_since) == (
        eng.policy.revision, 2, failed[0].at)
    assert eng.reload() is False and len([e for e in events if isinstance(e, ReloadRecovered)]) == 1

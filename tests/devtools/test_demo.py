"""The demo on a slow machine: a worker throttled with SIGSTOP/SIGCONT still gets a full summary.

Starts its own embedded broker and Valkey (the demo always does), so it also proves the demo
cleans up every temporary folder it made.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from portrait_dev import demo, synth

USERS, EVENTS, SEED = 80, 1500, 11
STALL_S = 30.0  # generous: a busy CI box must not turn the throttle into a stall
PAUSE_S, RUN_S = 2.0, 1.0  # the worker runs one second in three


class Throttle(threading.Thread):
    """Keeps a process stopped ``PAUSE_S`` out of every ``PAUSE_S + RUN_S`` seconds."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.done = threading.Event()
        self.pauses = 0

    def run(self) -> None:
        while not self.done.is_set() and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.done.wait(PAUSE_S)
            os.kill(self.proc.pid, signal.SIGCONT)
            self.pauses += 1
            self.done.wait(RUN_S)

    def stop(self) -> None:
        self.done.set()
        self.join()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)


def test_a_throttled_worker_still_gets_a_full_summary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    throttles: list[Throttle] = []
    start_worker, stop_worker = demo.start_worker, demo.stop_worker

    def throttled_start(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        proc = start_worker(*args, **kwargs)  # type: ignore[arg-type]
        throttles.append(Throttle(proc))
        throttles[-1].start()
        return proc

    def unthrottled_stop(proc: subprocess.Popen[bytes], *args: object) -> None:
        for throttle in throttles:
            throttle.stop()
        stop_worker(proc)

    monkeypatch.setattr(demo, "start_worker", throttled_start)
    monkeypatch.setattr(demo, "stop_worker", unthrottled_stop)

    assert demo.run_demo(users=USERS, events=EVENTS, seed=SEED, stall_s=STALL_S, serve=False) == 0

    out = capsys.readouterr().out
    assert throttles and throttles[0].pauses >= 5, out
    expected_events = len(synth.generate(users=USERS, events=EVENTS, seed=SEED))
    expected_bad = len(synth.malformed_messages(SEED))
    replayed = re.search(r"\(replayed (\d+) events \+ (\d+) malformed\)", out)
    applied = re.search(r"events applied\s+: (\d+)", out)
    duplicates = re.search(r"duplicates skipped\s+: (\d+)", out)
    dead = re.search(r"dead-lettered\s+: (.*)", out)
    assert replayed and applied and duplicates and dead, out
    assert [int(g) for g in replayed.groups()] == [expected_events, expected_bad], out
    # every replayed event applied once or recognised as a duplicate (redeliveries after a
    # rebalance are counted apart), every malformed message dead-lettered
    assert int(applied[1]) + int(duplicates[1]) == expected_events, out
    assert sum(int(part.split("=")[1]) for part in dead[1].split(", ")) == expected_bad, out
    assert "=== sample profiles ===" in out
    assert list(tmp_path.glob("portrait-demo-*")) == []  # nothing left behind

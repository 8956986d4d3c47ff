"""instag.procs on real processes: the watchdog stops what a killed parent started; signals unwind."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import REPO, instag_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux's /proc")

# A parent that starts a watchdog, then (after it) a child in its own process group, a child that ignores
# SIGTERM, and a grandchild; it prints their pids and sleeps until killed (or stops the watchdog).
PARENT = textwrap.dedent("""
    import json, subprocess, sys, time
    from instag.procs import Watchdog
    old = subprocess.Popen(["sleep", "300"])  # started before the watchdog: not its business
    dog = Watchdog(grace=float(sys.argv[1]))
    group = subprocess.Popen(["sleep", "300"], start_new_session=True)
    dog.watch_group(group.pid)
    stubborn = subprocess.Popen([sys.executable, "-c",
                                 "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
    tree = subprocess.Popen(["sh", "-c", "sleep 300 & wait"])
    time.sleep(0.5)
    print(json.dumps({"old": old.pid, "dog": dog.proc.pid, "group": group.pid, "stubborn": stubborn.pid,
                      "tree": tree.pid}), flush=True)
    if sys.argv[2] == "stop":
        dog.stop()
        print("stopped", flush=True)
    time.sleep(300)
""")


def alive(pid: int) -> bool:
    from instag.procs import proc_stat

    st = proc_stat(pid)
    return st is not None and st[0] not in "ZX"


def start_parent(mode: str, grace: float = 2.0):
    proc = subprocess.Popen([sys.executable, "-c", PARENT, str(grace), mode], stdout=subprocess.PIPE, text=True,
                            env=instag_env(), cwd=REPO, start_new_session=True)
    pids = json.loads(proc.stdout.readline())
    return proc, pids


def wait_gone(pids, timeout: float) -> float:
    t0 = time.monotonic()
    while any(alive(p) for p in pids) and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    return time.monotonic() - t0


def test_watchdog_stops_what_a_killed_parent_started():
    from instag.procs import descendants

    proc, pids = start_parent("run")
    try:
        grandchildren = descendants([pids["tree"]])
        assert grandchildren and all(alive(p) for p in pids.values())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        started = [pids["group"], pids["tree"], *grandchildren]
        took = wait_gone(started, 5)
        assert not any(alive(p) for p in started), f"still there after {took:.1f} s"
        assert took < 1.5  # SIGTERM at once (the parent-death signal), not after a poll
        took = wait_gone([pids["stubborn"], pids["dog"]], 10)
        assert not alive(pids["stubborn"]) and not alive(pids["dog"])
        assert 1.5 <= took < 4  # SIGKILL once the 2 s grace is over
        assert alive(pids["old"])  # started before the watchdog: left alone
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in (pids["group"], pids["stubborn"]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_stopped_watchdog_leaves_everything_alone():
    proc, pids = start_parent("stop")
    try:
        assert proc.stdout.readline().strip() == "stopped"
        assert not alive(pids["dog"])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(1)
        assert alive(pids["group"]) and alive(pids["tree"])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in (pids["group"], pids["stubborn"], pids["tree"]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_raising_on_unwinds_once_and_restores_the_handlers():
    from instag.procs import Terminated, raising_on

    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(Terminated) as e:
        with raising_on(signal.SIGTERM, signal.SIGHUP) as caught:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                os.kill(os.getpid(), signal.SIGHUP)  # a second signal does not cut the cleanup short
                cleaned.append(True)
    assert cleaned and caught.signum == signal.SIGTERM and e.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == before

"""Processes that instag starts do not outlive it.

- :func:`raising_on`: SIGTERM and SIGHUP (and SIGINT where asked) raise :class:`Terminated` in the main
  thread, so the ``finally`` blocks that stop a server or an engine run, as they do for Ctrl-C.
- :class:`Watchdog`: for deaths that cannot be handled (SIGKILL, a crash), a small process that outlives
  its parent on purpose. When the parent dies it stops what the parent started since the watchdog
  started (a vLLM engine's processes) and the process groups it was given (a server's): SIGTERM, then
  SIGKILL after a grace period. It hears of the death from a parent-death signal (Linux), from EOF on its
  stdin and by polling ``os.getppid()``. Run as a script, it uses the standard library only.

Finding the processes to stop needs Linux's /proc; elsewhere only the given process groups are stopped.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1
PDEATH_SIGNAL = signal.SIGUSR1
POLL_S = 0.5


class Terminated(KeyboardInterrupt):
    """A termination signal was caught; it unwinds like Ctrl-C so that cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Caught:
    signum: int | None = None


@contextmanager
def raising_on(*signums: int) -> Iterator[Caught]:
    """Inside the block the first of ``signums`` raises :class:`Terminated` (and is recorded in the yielded
    object); later ones are ignored so that the cleanup it started is not cut short. Does nothing outside
    the main thread, where Python cannot set signal handlers."""
    caught = Caught()
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum: int, frame: object) -> None:
        if caught.signum is None:
            caught.signum = signum
            raise Terminated(signum)

    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield caught
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


# --- /proc (Linux) ---------------------------------------------------------------------------------------

def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgid, start time in clock ticks) of a process, None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[19])


def processes() -> dict[int, tuple[str, int, int, int]]:
    """Every live process (zombies left out) with its :func:`proc_stat`."""
    out = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if name.isdigit() and (st := proc_stat(int(name))) and st[0] not in "ZX":
            out[int(name)] = st
    return out


def descendants(roots: Iterable[int], procs: dict[int, tuple[str, int, int, int]] | None = None) -> set[int]:
    """The live descendants of ``roots`` (not the roots themselves)."""
    procs = processes() if procs is None else procs
    kids: dict[int, list[int]] = {}
    for pid, st in procs.items():
        kids.setdefault(st[1], []).append(pid)
    out: set[int] = set()
    todo = list(roots)
    while todo:
        for kid in kids.get(todo.pop(), []):
            if kid not in out:
                out.add(kid)
                todo.append(kid)
    return out


def group_members(pgid: int) -> set[int]:
    """The live processes of a process group."""
    return {pid for pid, st in processes().items() if st[2] == pgid}


def stop_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM to what is left of a process group, SIGKILL to what is still there after ``grace`` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    if os.path.isdir("/proc"):
        return bool(group_members(pgid))  # killpg(pgid, 0) also counts zombies not yet reaped
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def set_parent_death_signal(sig: int) -> bool:
    """Ask Linux to send ``sig`` to this process when the thread that forked it dies."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


# --- the watchdog ----------------------------------------------------------------------------------------

class Watchdog:
    """Parent side: start the watchdog process; :meth:`stop` it once everything is cleaned up here."""

    # 5 s as vLLM itself waits before it kills its engine: its worker did not exit on SIGTERM here.
    def __init__(self, grace: float = 5.0):
        # -I -S: the standard library only, whatever PYTHONPATH says; its own session, so that a terminal's
        # Ctrl-C or hang-up meant for instag does not reach it.
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()),
                                      str(grace)], stdin=subprocess.PIPE, start_new_session=True)
        # It watches processes that start in a later clock tick than itself (/proc's start times count ticks).
        time.sleep(1.5 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.02)

    def _send(self, line: str) -> bool:
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, ValueError):
            return False

    def watch_group(self, pgid: int) -> None:
        """Also stop process group ``pgid`` when this process dies."""
        self._send(f"group {pgid}")

    def stop(self, reap: bool = False, timeout: float = 30.0) -> None:
        """Dismiss the watchdog; with ``reap``, it first stops what it watches, as if this process had died."""
        if self.proc.poll() is None:
            self._send("reap" if reap else "stop")
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _ParentGone(Exception):
    pass


def _watch(parent: int, grace: float) -> int:
    me = os.getpid()
    own = proc_stat(me)
    since = own[3] if own else 0
    try:
        parent_group = os.getpgid(parent)
    except ProcessLookupError:
        parent_group = None
    groups: set[int] = set()

    def on_parent_death(signum: int, frame: object) -> None:
        # A thread of the parent that exits sends it too (the parent lives on): only a new ppid counts.
        if os.getppid() != parent:
            raise _ParentGone

    signal.signal(PDEATH_SIGNAL, on_parent_death)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    set_parent_death_signal(PDEATH_SIGNAL)
    buf = b""
    try:
        while os.getppid() == parent:
            ready, _, _ = select.select([0], [], [], POLL_S)
            if not ready:
                continue
            chunk = os.read(0, 4096)
            if not chunk:  # the parent is exiting, or dropped us without a word: as good as gone
                deadline = time.monotonic() + 1.0
                while os.getppid() == parent and time.monotonic() < deadline:
                    time.sleep(0.05)
                break
            *lines, buf = (buf + chunk).split(b"\n")
            for line in lines:
                cmd, *args = line.split() or [b""]
                if cmd == b"stop":
                    return 0
                if cmd == b"reap":
                    raise _ParentGone
                if cmd == b"group":
                    groups.add(int(args[0]))
    except _ParentGone:
        pass
    signal.signal(PDEATH_SIGNAL, signal.SIG_IGN)
    _reap(parent, parent_group, since, groups, grace)
    return 0


def _reap(parent: int, parent_group: int | None, since: int, groups: set[int], grace: float) -> None:
    me = os.getpid()

    def targets() -> dict[int, int]:
        procs = processes()
        # What the parent started since we started: still its children (it lives, and asked us to reap),
        # or, orphaned by its death, children of the process that adopted us both, in its process group.
        adopter = os.getppid()
        roots = {pid for pid, (_, ppid, pgid, start) in procs.items()
                 if pid != me and start > since
                 and (ppid == parent or (ppid == adopter and adopter != parent and pgid == parent_group))}
        roots |= {pid for pid, st in procs.items() if st[2] in groups}
        found = roots | descendants(roots, procs)
        found.discard(me)
        return {pid: procs[pid][3] for pid in found}

    def send(victims: dict[int, int], sig: int) -> None:
        for pid, start in victims.items():
            st = proc_stat(pid)
            if st and st[3] == start:  # not a new process that got a reused pid
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    if not os.path.isdir("/proc"):
        for g in groups:
            stop_group(g, grace)
        return
    signalled: dict[int, int] = {}
    deadline = time.monotonic() + grace
    while True:
        victims = targets()
        if not victims:
            return
        if time.monotonic() >= deadline:
            send(victims, signal.SIGKILL)
            return
        send({p: s for p, s in victims.items() if signalled.get(p) != s}, signal.SIGTERM)
        signalled.update(victims)
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(_watch(int(sys.argv[1]), float(sys.argv[2])))

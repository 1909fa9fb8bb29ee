"""Processes of a test's subprocess run, found in ``/proc`` (Linux): for tests that SIGKILL a run mid-way."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def proc_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the process name (state, ppid, pgrp, session, ...), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (``/proc/PID/task/TID/children``)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                out += [int(child), *descendants(int(child))]
    return out


def wait_reaped(pid: int) -> None:
    """Wait until ``pid`` is gone or a zombie (a killed process whose parent is gone is reaped by init)."""
    while (fields := proc_fields(pid)) is not None and fields[0] != "Z":
        time.sleep(0.05)


def kill_session(sid: int) -> None:
    """SIGKILL every live process of session ``sid`` until none is left (processes that put themselves in process
    groups of their own, as Ray's do, included): a node lost at once."""
    while True:
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            fields = proc_fields(stat.parent.name)
            if fields is not None and int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)

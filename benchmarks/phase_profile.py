"""Per-phase wall time and peak RSS of one process, for the scale benchmarks.

``PhaseProfile.wrap(obj, attr, name)`` replaces a function with one that records its wall time
and its own peak RSS under ``name``. Peaks are exact, not sampled: entering a phase resets the
kernel's high-water mark (``/proc/self/clear_refs`` = 5, Linux) after folding the running peak
into every enclosing phase, so nested phases each get their own peak and the outer ones still see
the inner ones'. Phases called more than once sum their time and keep the largest peak. ``cpu_seconds`` (user +
system, all threads) is reported beside wall time because the machine's cores are shared.
"""

from __future__ import annotations

import functools
import re
import resource
import time
from typing import Any

_HWM = re.compile(r"VmHWM:\s+(\d+) kB")


def _hwm_gib() -> float:
    with open("/proc/self/status") as f:
        m = _HWM.search(f.read())
    return int(m.group(1)) / 2**20 if m else float("nan")


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class PhaseProfile:
    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}
        self._stack: list[list[Any]] = []  # [name, start, cpu start, running peak]

    def _fold(self) -> None:
        peak = _hwm_gib()
        for frame in self._stack:
            frame[3] = max(frame[3], peak)

    def enter(self, name: str) -> None:
        self._fold()
        _reset_hwm()
        self._stack.append([name, time.perf_counter(), _cpu_seconds(), _hwm_gib()])

    def leave(self) -> None:
        self._fold()
        name, start, cpu, peak = self._stack.pop()
        rec = self.phases.setdefault(name, {"seconds": 0.0, "cpu_seconds": 0.0, "peak_rss_gib": 0.0, "calls": 0})
        rec["seconds"] += time.perf_counter() - start
        rec["cpu_seconds"] += _cpu_seconds() - cpu
        rec["peak_rss_gib"] = max(rec["peak_rss_gib"], peak)
        rec["calls"] += 1

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        fn = getattr(obj, attr)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()

        setattr(obj, attr, timed)

    def report(self) -> dict[str, dict[str, float]]:
        return {k: {**v, "calls": int(v["calls"])} for k, v in self.phases.items()}

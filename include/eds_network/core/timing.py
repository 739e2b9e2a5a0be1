"""Wall and thread-CPU seconds per phase of a step, measured by the step itself."""

from __future__ import annotations

import time


class PhaseTimer:
    """Wall and thread-CPU seconds per named phase of a step: `start(name)` closes the running phase and
    opens `name`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._name: str | None = None
        self._t = self._c = 0.0

    def start(self, name: str) -> None:
        self.stop()
        self._name, self._t, self._c = name, time.perf_counter(), time.thread_time()

    def stop(self) -> None:
        if self._name is not None:
            el, cpu = time.perf_counter() - self._t, time.thread_time() - self._c
            self.seconds[self._name] = round(self.seconds.get(self._name, 0.0) + el, 4)
            self.cpu[self._name] = round(self.cpu.get(self._name, 0.0) + cpu, 4)
            self._name = None

    def __call__(self, name: str) -> PhaseTimer:
        self.start(name)
        return self

    def __enter__(self) -> PhaseTimer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

"""What training costs: process CPU time, GPU step time, and GPU energy from NVML where available.

NVML comes from the optional ``nvidia-ml-py`` package (``pip install 'streamfed[gpu]'``); without it,
or without an NVIDIA GPU, measured energy is ``None`` and estimates use the topology's watts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from streamfed.topology.spec import EnergySpec

log = logging.getLogger(__name__)


class GpuEnergyMeter:
    """Total GPU energy (joules) of the visible NVIDIA devices since the previous reading."""

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._nvml: Any = None
        self._last: float | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._last = self._total()
        except Exception as exc:  # no package, no driver, no GPU: all mean "not measured"
            log.debug("GPU energy not measured: %s", exc)
            self._handles = []

    @property
    def available(self) -> bool:
        return bool(self._handles) and self._last is not None

    def _total(self) -> float:
        return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1000.0

    def read(self) -> float | None:
        """Joules since the previous call, or None where not measurable."""
        if not self.available:
            return None
        try:
            now = self._total()
        except Exception as exc:  # a device that stops answering stops being measured
            log.warning("NVML energy reading failed: %s", exc)
            self._handles = []
            return None
        assert self._last is not None
        used, self._last = now - self._last, now
        return max(0.0, used)


class CpuClock:
    """Process CPU seconds since the previous reading."""

    def __init__(self) -> None:
        self._last = time.process_time()

    def read(self) -> float:
        now = time.process_time()
        used, self._last = now - self._last, now
        return used


def estimate(
    spec: EnergySpec, cpu_seconds: float, gpu_seconds: float, gpu_joules_measured: float | None
) -> tuple[float, float]:
    """(energy in joules, grams CO2e): measured GPU energy where known, else seconds x watts."""
    gpu = gpu_joules_measured if gpu_joules_measured is not None else gpu_seconds * spec.gpu_watts
    joules = cpu_seconds * spec.cpu_watts + gpu
    return joules, joules / 3.6e6 * spec.grid_g_co2e_per_kwh

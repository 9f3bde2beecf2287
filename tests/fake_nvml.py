"""A fake ``pynvml`` at the library boundary: the functions caio-bench calls, over a list of
devices whose readings the test sets. Values follow NVML's units (bytes, milliwatts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace


class NVMLError(Exception):
    """Stands for pynvml.NVMLError (and its NotSupported / LibraryNotFound subclasses)."""


@dataclass
class FakeDevice:
    name: str = "NVIDIA H100 80GB HBM3"
    gpu_pct: float = 0.0
    used_bytes: int = 0
    total_bytes: int = 80 * 2**30
    power_mw: int | None = 0  # None: the board does not report power


@dataclass
class FakeNvml:
    devices: list[FakeDevice] = field(default_factory=list)
    driver: str = "550.54.15"
    init_error: str = ""  # set: nvmlInit raises, as without a driver
    calls: list[str] = field(default_factory=list)
    NVMLError = NVMLError

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        if not 0 <= index < len(self.devices):
            raise NVMLError("Invalid Argument")
        return self.devices[index]

    def nvmlDeviceGetUtilizationRates(self, handle: FakeDevice):
        self.calls.append("utilization")
        return SimpleNamespace(gpu=handle.gpu_pct, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeDevice):
        return SimpleNamespace(used=handle.used_bytes, total=handle.total_bytes,
                               free=handle.total_bytes - handle.used_bytes)

    def nvmlDeviceGetPowerUsage(self, handle: FakeDevice) -> int:
        if handle.power_mw is None:
            raise NVMLError("Not Supported")
        return handle.power_mw

    def nvmlDeviceGetName(self, handle: FakeDevice) -> bytes:
        return handle.name.encode()  # older bindings return bytes

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

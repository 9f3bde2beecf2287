"""The local server's GPUs through NVML: which replica uses which device, and their samples.

Question: how busy were the GPUs that the replicas ran on? NVML (``nvidia-ml-py``, module
``pynvml``) answers per device: utilisation (% of the last sample period in which a kernel
ran: the duty cycle that Cloud Monitoring reports for cloud accelerators), memory used and
total, and power where the board reports it.

Pinning (``local_gpus``): '' leaves the replicas' environment alone (they see every GPU,
and each device is sampled once, dimension 'gpu-<d>'); 'none' hides every GPU
(``CUDA_VISIBLE_DEVICES=''``: CPU only, nothing sampled); 'all' or a list of NVML device
indices ('0,2') pins replica ``i`` to device ``devices[i % len(devices)]`` (round-robin),
sampled as 'replica-<i>/gpu-<d>'. Pinned replicas get ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so
that CUDA numbers the devices as NVML does.

Every NVML call goes through the ``nvml`` object given (the ``pynvml`` module, or a fake in
tests): that is the seam. Without the library, without a driver or without a GPU nothing is
sampled and one line says why; an NVML error never reaches the caller.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from caio_operators.targets.records import CsvBatchWriter

log = logging.getLogger(__name__)

#: the GPU sample files' columns (one row per replica and device per second)
SAMPLE_COLUMNS = ("ts", "replica", "device", "gpu_pct", "memory_used_mb", "memory_total_mb",
                  "power_w")
#: the accepted values of ``local_gpus`` (checked in spec/checks.py, parsed here)
PATTERN = r"^(|none|all|[0-9]{1,2}(,[0-9]{1,2}){0,15})$"
UNPINNED = ""
BYTES_PER_MB = 2**20


def load_nvml() -> Any | None:
    """The ``pynvml`` module, or None when nvidia-ml-py is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def start_nvml(nvml: Any | None) -> tuple[int, str]:
    """Initialise NVML: ``(device count, '')``, or ``(0, why not)``; never raises."""
    if nvml is None:
        return 0, "nvidia-ml-py (pynvml) is not installed"
    try:
        nvml.nvmlInit()
        count = int(nvml.nvmlDeviceGetCount())
    except Exception as exc:  # NVMLError (library or driver missing) and anything else
        return 0, f"NVML is not usable here ({type(exc).__name__}: {exc})"
    return count, "" if count else "NVML sees no GPU"


def stop_nvml(nvml: Any) -> None:  # the pynvml module (untyped) or None
    try:
        nvml.nvmlShutdown()
    except Exception:  # already shut down, or never started
        log.debug("nvmlShutdown failed", exc_info=True)


def inventory(nvml: Any = None) -> dict[str, Any]:
    """``{"driver": ..., "devices": [{"index", "name", "memory_total_mb"}]}`` for the run's
    provenance; empty values when there is no GPU or no NVML."""
    nvml = nvml if nvml is not None else load_nvml()
    count, _ = start_nvml(nvml)
    try:
        if not count:
            return {"driver": "", "devices": []}
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        devices = []
        for index in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append({"index": index, "name": _text(nvml.nvmlDeviceGetName(handle)),
                            "memory_total_mb": round(memory.total / BYTES_PER_MB)})
        return {"driver": driver, "devices": devices}
    except Exception as exc:
        log.warning("cannot read the GPU inventory from NVML: %s", exc)
        return {"driver": "", "devices": []}
    finally:
        if nvml is not None:
            stop_nvml(nvml)


def parse_gpus(text: str, device_count: int) -> list[int] | None:
    """The devices the replicas are pinned to: None for '' (not pinned), [] for 'none',
    every device for 'all', else the listed NVML indices (each must exist)."""
    text = (text or "").strip()
    if not re.match(PATTERN, text):
        raise ValueError(f"local_gpus={text!r}: accepted: '' (not pinned), 'none', 'all' or "
                         "device indices like '0,1'")
    if text == UNPINNED:
        return None
    if text == "none":
        return []
    if text == "all":
        return list(range(device_count))
    devices = [int(part) for part in text.split(",")]
    missing = sorted({d for d in devices if d >= device_count})
    if missing:
        raise ValueError(f"local_gpus={text!r}: no GPU {missing} on this machine (NVML sees "
                         f"{device_count}); use indices 0..{device_count - 1} or ''")
    return list(dict.fromkeys(devices))


def device_of(replica: int, devices: Sequence[int] | None) -> int | None:
    """Replica ``replica``'s device: round-robin over ``devices``; None: not pinned."""
    return devices[replica % len(devices)] if devices else None


def replica_devices(replicas: int, devices: Sequence[int] | None) -> dict[int, int | None]:
    """Replica index -> its device, for replicas 0..replicas-1."""
    return {index: device_of(index, devices) for index in range(replicas)}


def replica_env(device: int | None, devices: Sequence[int] | None) -> dict[str, str]:
    """The environment a replica gets for its device: nothing when not pinned, no visible
    GPU for 'none', else its one device, numbered as NVML does."""
    if devices is None:
        return {}
    if device is None:
        return {"CUDA_VISIBLE_DEVICES": ""}
    return {"CUDA_VISIBLE_DEVICES": str(device), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def sampled_pairs(assignment: Mapping[int, int | None], devices: Sequence[int] | None,
                  device_count: int) -> list[tuple[str, int]]:
    """(replica label, device) pairs to sample: each pinned replica with its device; when
    not pinned, every device once with an empty replica label."""
    if devices is None:
        return [("", device) for device in range(device_count)]
    return [(str(index), device) for index, device in assignment.items() if device is not None]


class GpuSampler:
    """Reads the devices of ``pairs`` through ``nvml`` and returns sample rows.

    Each device is read once per ``sample()``, whatever the number of replicas on it.
    A reading NVML cannot give (power on many boards) is left empty, said once per device.
    """

    def __init__(self, nvml: Any, pairs: Sequence[tuple[str, int]]) -> None:
        self.nvml = nvml
        self.pairs = list(pairs)
        self._handles: dict[int, Any] = {}
        self._said: set[tuple[int, str]] = set()

    def _once(self, device: int, what: str, exc: Exception) -> None:
        if (device, what) not in self._said:
            self._said.add((device, what))
            log.info("GPU %d: no %s from NVML (%s); left empty", device, what, exc)

    def _read(self, device: int) -> tuple[str, str, str, str]:
        nvml = self.nvml
        try:
            handle = self._handles.get(device)
            if handle is None:
                handle = self._handles[device] = nvml.nvmlDeviceGetHandleByIndex(device)
        except Exception as exc:
            self._once(device, "handle", exc)
            return "", "", "", ""
        values: list[Any] = []
        for what, read in (
                ("utilisation", lambda: f"{nvml.nvmlDeviceGetUtilizationRates(handle).gpu:.1f}"),
                ("memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle)),
                ("power", lambda: f"{nvml.nvmlDeviceGetPowerUsage(handle) / 1000:.1f}")):
            try:
                values.append(read())
            except Exception as exc:
                self._once(device, what, exc)
                values.append(None)
        gpu_pct, memory, power = values
        used = f"{memory.used / BYTES_PER_MB:.1f}" if memory is not None else ""
        total = f"{memory.total / BYTES_PER_MB:.1f}" if memory is not None else ""
        return gpu_pct or "", used, total, power or ""

    def sample(self, now: float) -> list[tuple]:
        readings = {device: self._read(device) for device in dict.fromkeys(
            d for _, d in self.pairs)}
        return [(f"{now:.6f}", replica, device, *readings[device])
                for replica, device in self.pairs if any(readings[device])]


class LocalGpus:
    """The local server's GPUs for one run: the pinning and the samples.

    ``LocalGpus.open(text, replicas)`` starts NVML and resolves ``local_gpus`` (a
    ValueError names a device that does not exist); ``env(i, base)`` is replica ``i``'s
    environment; ``start(samples_dir, ...)`` samples on its own thread into CSV files;
    ``close()`` stops it, writes the last rows and shuts NVML down.
    """

    def __init__(self, nvml: Any | None, device_count: int, why: str,
                 devices: list[int] | None, replicas: int) -> None:
        self.nvml, self.device_count, self.why = nvml, device_count, why
        self.devices = devices
        self.assignment = replica_devices(replicas, devices)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer: CsvBatchWriter | None = None

    @classmethod
    def open(cls, text: str, replicas: int, nvml: Any | None = None) -> LocalGpus:
        nvml = nvml if nvml is not None else load_nvml()
        count, why = start_nvml(nvml)
        try:
            devices = parse_gpus(text, count)
        except ValueError as exc:
            if why:
                raise ValueError(f"{exc} ({why})") from None
            raise
        if nvml is not None and not count:
            stop_nvml(nvml)  # nothing to sample: release NVML at once
        return cls(nvml if count else None, count, why, devices, replicas)

    def env(self, replica: int, base: Mapping[str, str]) -> dict[str, str]:
        env = dict(base)
        # TensorFlow takes almost all of a GPU's memory by default: two replicas on one
        # device would fail. Growing on demand lets them share it (the user may say otherwise).
        env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        # any index: a replica started later (a restart, a scale-out) follows the same rule
        env.update(replica_env(device_of(replica, self.devices), self.devices))
        return env

    def describe(self) -> str:
        if self.devices is None:
            return "replicas not pinned to GPUs (they see every GPU)"
        if not self.devices:
            return "GPUs hidden from the replicas (local_gpus=none)"
        return "replica -> GPU: " + ", ".join(f"{i} -> {d}" for i, d in self.assignment.items())

    def start(self, samples_dir: str, interval_s: float, flush_interval_s: float) -> bool:
        """Sample the replicas' GPUs into ``samples_dir``; False (said once) when there is
        nothing to sample."""
        from caio_operators.targets.records import CsvBatchWriter

        pairs = sampled_pairs(self.assignment, self.devices, self.device_count)
        why = ("no samples directory" if not samples_dir else self.why
               or ("" if pairs else "no GPU is used by the replicas"))
        if why or self.nvml is None:
            log.info("no GPU samples: %s", why or "NVML is not running")
            return False
        writer = self._writer = CsvBatchWriter(samples_dir, "gpu", SAMPLE_COLUMNS)
        Path(samples_dir).mkdir(parents=True, exist_ok=True)  # not empty: checked above
        writer.start(flush_interval_s)
        self._thread = sample_in_background(GpuSampler(self.nvml, pairs), writer.add,
                                            interval_s, self._stop)
        log.info("sampling GPU(s) %s every %g s", sorted({d for _, d in pairs}), interval_s)
        return True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._writer is not None:
            self._writer.close()
        if self.nvml is not None:
            stop_nvml(self.nvml)
            self.nvml = None


def sample_in_background(sampler: GpuSampler, add: Callable[[tuple], None],
                         interval_s: float, stop: threading.Event) -> threading.Thread:
    """Sample every ``interval_s`` on a thread of its own until ``stop`` is set, so a slow
    NVML call never delays the CPU samples; rows go to ``add``."""

    def run() -> None:
        next_at = time.monotonic() + interval_s
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += interval_s
            try:
                for row in sampler.sample(time.time()):
                    add(row)
            except Exception:  # keep serving without GPU samples
                log.exception("GPU sampling failed; no more GPU samples this run")
                return

    thread = threading.Thread(target=run, name="gpu-samples", daemon=True)
    thread.start()
    return thread

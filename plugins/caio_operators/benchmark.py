"""What makes two runs comparable: the benchmark fingerprint.

Question: may run A's figures be compared with run B's to judge a change? Only when both
measured the same benchmark, so that the one thing that differs is what is being compared
(the model version, or whatever a sweep varies).

Rule: a run's *benchmark* is every setting that shapes its measurement except the model
under test: the target kind and its serving settings, the machine for target=local, the
signature, instances per request and payload, the load shape and those of its knobs the
shape uses, workers, load runner and record sampling. Knobs a shape ignores (``rate`` for a
closed-loop staircase) are left out, so changing them changes nothing. The *fingerprint* is
a short hash of the benchmark. The model under test (name, version, source, endpoint URL)
is not part of it: comparing versions is the point. Two runs of one version must also share
its source and endpoint URL (:data:`IDENTITY`), or they measured two models under one name.

Pure: params (and provenance) in, plain values out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from caio_operators.spec.runspec import RunSpec

#: model identity: differs between versions by design, must match within one version
IDENTITY = ("model_source", "endpoint_url")

_COMMON = ("target", "signature", "instances_per_request", "images_uri", "load_shape",
           "duration_s", "workers", "load_runner", "record_sample")
_CLOUD = ("region", "machine_type", "accelerator_type", "accelerator_count", "min_replicas",
          "max_replicas", "autoscaling_target")
_TARGET = {
    "local": ("replicas", "server_threads", "server_batch_max"),
    "endpoint": ("protocol",),
    "vertex": (*_CLOUD, "serving_container_image"),
    "caip": (*_CLOUD, "runtime_version"),
}
#: an autoscaled local server's settings (a fixed one's fingerprint stays what it was)
_LOCAL_AUTOSCALING = ("local_autoscaling", "min_replicas", "max_replicas", "autoscaling_target",
                      "scale_up_window_s", "scale_down_window_s")
_CLOSED = ("users", "spawn_rate", "think_time_s")
_SHAPE = {
    "constant": _CLOSED,
    "staircase": (*_CLOSED, "step_users", "step_duration_s"),
    "open_rate": ("rate", "rate_profile", "arrivals", "max_in_flight"),
    "peak_search": ("rate", "arrivals", "max_in_flight", "slo_ms", "slo_percentile",
                    "max_error_rate", "max_rate", "peak_precision", "window_s",
                    "min_requests"),
}
_RATE_PROFILE = {"staircase": ("step_rate", "step_duration_s"),
                 "spike": ("spike_rate", "spike_start_s", "spike_duration_s")}
#: the field naming the machine of a target=local run (from the run's provenance)
HOST = "host"


def host_of(provenance: Mapping[str, Any] | None) -> str | None:
    """The serving machine of a target=local run as the fingerprint sees it: architecture
    and CPU count, and its GPU models when it has any (a host name would make every Composer
    worker pod a new benchmark)."""
    if not provenance:
        return None
    host = f"{provenance.get('machine')} x{provenance.get('cpu_count')} cpus"
    gpus = (provenance.get("gpus") or {}).get("devices") or []
    if gpus:  # a machine without GPUs keeps the fingerprint it had before they were recorded
        host += ", " + ", ".join(str(d.get("name")) for d in gpus)
    return host


def benchmark_fields(params: Mapping[str, Any], provenance: Mapping[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The readable parts of a run's benchmark (see the module doc), in a fixed order.

    ``params``: a RunSpec's ``params()`` (or the ``runs.params`` JSON of any earlier run).
    ``provenance``: the run's provenance, for the machine of a target=local run.
    """
    target, shape = str(params.get("target") or ""), str(params.get("load_shape") or "")
    names = [*_COMMON, *_TARGET.get(target, ()), *_SHAPE.get(shape, ())]
    if target == "local" and (params.get("server_batch_max") or 0) > 1:
        names.append("server_batch_timeout_ms")
    if target == "local" and params.get("local_gpus"):  # absent or empty: as before GPUs
        names.append("local_gpus")
    if target == "local" and params.get("local_autoscaling"):
        names += _LOCAL_AUTOSCALING
    if shape == "open_rate":
        names += _RATE_PROFILE.get(str(params.get("rate_profile") or ""), ())
    if params.get("request_timeout_s", RunSpec.request_timeout_s) != RunSpec.request_timeout_s:
        names.append("request_timeout_s")  # the default keeps the fingerprint it had
    out = {name: _norm(params.get(name)) for name in dict.fromkeys(names)}
    if target == "local":
        out[HOST] = host_of(provenance)
    return out


def _norm(value: Any) -> Any:
    # 8 and 8.0 are one setting, whether it came from the form or from --conf JSON
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def fingerprint(benchmark: Mapping[str, Any]) -> str:
    """A short stable hash of a benchmark's fields."""
    text = json.dumps(dict(benchmark), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(candidate: Mapping[str, Any], baseline: Mapping[str, Any],
                ignore: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """``field -> (candidate value, baseline value)`` for every field both have that
    differs, less ``ignore``. A field only one side has follows from one both have (users
    from a closed-loop shape, replicas from target=local), which is named instead."""
    skip = set(ignore)
    return {n: (candidate[n], baseline[n]) for n in candidate
            if n in baseline and n not in skip and candidate[n] != baseline[n]}


@dataclass(frozen=True)
class Candidate:
    """An earlier run that could be a baseline: its id, start (epoch seconds), benchmark
    fields and model identity (:data:`IDENTITY`)."""

    run_id: str
    started: float
    fields: Mapping[str, Any]
    identity: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Choice:
    """The baseline picked (``run_id``), or None with the nearest run and how it differs."""

    run_id: str | None
    nearest: str | None = None
    diff: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)


def pick_baseline(fields: Mapping[str, Any], candidates: Iterable[Candidate],
                  identity: Mapping[str, Any] | None = None) -> Choice:
    """The latest candidate with the same benchmark (and, when ``identity`` is given, the
    same model identity); else None, naming the nearest candidate (fewest differing fields,
    then latest) and its differences. No candidates: ``Choice(None)``."""
    scored = []
    for cand in candidates:
        diff = differences(fields, cand.fields)
        if identity is not None:
            diff.update(differences(identity, cand.identity))
        scored.append((len(diff), -cand.started, cand, diff))
    if not scored:
        return Choice(None)
    same = [s for s in scored if not s[0]]
    if same:
        return Choice(min(same, key=lambda s: s[1])[2].run_id)
    _, _, nearest, diff = min(scored, key=lambda s: (s[0], s[1]))
    return Choice(None, nearest.run_id, diff)


def describe(diff: Mapping[str, tuple[Any, Any]]) -> str:
    """``replicas 2 vs 1, target 'local' vs 'endpoint'``: this run's value first."""
    return ", ".join(f"{name} {a!r} vs {b!r}" for name, (a, b) in diff.items())

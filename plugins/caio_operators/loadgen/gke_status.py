"""What the GKE launcher reads back from Kubernetes, as pure functions of the API objects:
a Job's state, a pod's state and exit code, a one-line summary of the pods, and the
progress in the master's log."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from caio_operators.loadgen.gke_manifests import COMPONENT_LABEL, CONTAINER


def job_state(job: Any) -> tuple[str, str]:
    """(``running`` | ``succeeded`` | ``failed``, why) of a V1Job."""
    status = getattr(job, "status", None)
    if status is None:
        return "running", ""
    for cond in status.conditions or []:
        if cond.status != "True":
            continue
        why = ": ".join(x for x in (cond.reason, cond.message) if x)
        if cond.type in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", why
        if cond.type in ("Failed", "FailureTarget"):
            return "failed", why
    spec = getattr(job, "spec", None)
    completions = (getattr(spec, "completions", None) or 1) if spec else 1
    if (status.succeeded or 0) >= completions:
        return "succeeded", ""
    backoff = getattr(spec, "backoff_limit", None) if spec else None
    if backoff is not None and (status.failed or 0) > backoff:
        return "failed", f"{status.failed} pods failed"
    return "running", ""


def _container_status(pod: Any) -> Any:
    for status in (pod.status.container_statuses or []) if pod.status else []:
        if status.name == CONTAINER:
            return status
    return None


def exit_code(pod: Any) -> int | None:
    status = _container_status(pod)
    terminated = status.state.terminated if status is not None and status.state else None
    return terminated.exit_code if terminated is not None else None


def pod_state(pod: Any) -> str:
    """``Running``, ``Pending (ImagePullBackOff: ...)``, ``Succeeded``, ``Failed (OOMKilled)``."""
    phase = (pod.status.phase if pod.status else None) or "Unknown"
    status = _container_status(pod)
    detail = ""
    if status is not None and status.state is not None:
        if status.state.waiting is not None and status.state.waiting.reason not in (
                None, "ContainerCreating"):
            waiting = status.state.waiting
            detail = waiting.reason + (f": {waiting.message[:160]}" if waiting.message else "")
        elif status.state.terminated is not None and phase == "Failed":
            term = status.state.terminated
            detail = f"{term.reason or 'Error'}, exit code {term.exit_code}"
    if not detail and phase == "Pending" and pod.status is not None:
        for cond in pod.status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                detail = f"{cond.reason}: {(cond.message or '')[:160]}"
    return f"{phase} ({detail})" if detail else phase


def summarize_pods(pods: Sequence[Any]) -> str:
    """``master Running; workers 2 Running, 1 Pending (ImagePullBackOff: ...)``."""
    parts = []
    for component in ("master", "worker"):
        states = [pod_state(p) for p in pods if component_of(p) == component]
        if component == "master":
            parts.append(f"master {states[-1] if states else 'not created yet'}")
            continue
        counts: dict[str, int] = {}
        for state in states:
            counts[state] = counts.get(state, 0) + 1
        parts.append("workers " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                                   or "not created yet"))
    return "; ".join(parts)


def component_of(pod: Any) -> str:
    return ((pod.metadata.labels or {}) if pod.metadata else {}).get(COMPONENT_LABEL, "")


_AGGREGATED = re.compile(
    r"^\s*Aggregated\s+(?P<requests>\d+)\s+(?P<failures>\d+)\([\d.]+%\)\s*\|.*\|\s*"
    r"(?P<rps>[\d.]+)\s+[\d.]+\s*$")
_USERS = re.compile(r"Shape test updating to (\d+) users|\((\d+) total users\)|"
                    r"Sending spawn jobs of (\d+) users|Ramping to (\d+) users")


def parse_master_log(text: str, users: int | None = None) -> dict[str, float] | None:
    """Progress from the tail of a headless Locust master's log: the last stats table's
    Aggregated row (requests, failures, current req/s) and the last user count it logged
    (``users``: the count known from earlier reads). ``None`` before the first table."""
    progress = None
    for line in text.splitlines():
        found = _USERS.search(line)
        if found:
            users = int(next(g for g in found.groups() if g is not None))
            continue
        row = _AGGREGATED.match(line)
        if row:
            progress = {"requests": int(row["requests"]), "failures": int(row["failures"]),
                        "rps": float(row["rps"])}
    if progress is None:
        return None
    progress["users"] = users if users is not None else 0
    return progress

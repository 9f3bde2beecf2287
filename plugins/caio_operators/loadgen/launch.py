"""Locust command lines and the test config, as pure data.

The same argv lists run the load locally (``loadgen.local``) and as GKE pods: only the
locust command, the master host, the paths and the image differ, and all of those are
parameters here. Nothing in this module touches processes, files or the network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from caio_operators import storage
from caio_operators.loadgen.locust_config import check_config, config_version, origin

DEFAULT_MASTER_PORT = 5557


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one distributed Locust run.

    ``env`` holds only the variables to add to the launcher's environment. ``csv_prefix``,
    ``html_path`` and ``log_dir`` are paths on the machine (or pod) running the master;
    ``requests_uri`` is where the workers write raw records (a bucket URI); ``publish_uri``,
    when set, is the bucket folder that Locust's CSV/HTML and the logs are copied to.
    """

    master_argv: tuple[str, ...]
    worker_argvs: tuple[tuple[str, ...], ...]
    env: Mapping[str, str]
    csv_prefix: str
    html_path: str
    log_dir: str
    requests_uri: str
    duration_s: float
    grace_s: float = 30.0
    publish_uri: str | None = None  # copy CSV/HTML/logs here after the run (a gs:// load dir)
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def workers(self) -> int:
        return len(self.worker_argvs)

    @property
    def stats_csv(self) -> str:
        return self.csv_prefix + "_stats.csv"

    @property
    def history_csv(self) -> str:
        return self.csv_prefix + "_stats_history.csv"

    @property
    def peak_search_uri(self) -> str:
        """Where a peak_search master writes its progress (next to the raw records)."""
        return storage.join(self.requests_uri.rsplit("/", 1)[0], "peak", "search.json")


def locust_command(python: str) -> list[str]:
    """``<python> -m locust``: the interpreter whose environment has locust installed."""
    return [python, "-m", "locust"]


def master_argv(
    *,
    locust_cmd: Sequence[str],
    locustfile: str,
    config_uri: str,
    predict_url: str,
    workers: int,
    csv_prefix: str,
    html_path: str,
    bind_host: str = "127.0.0.1",
    bind_port: int = DEFAULT_MASTER_PORT,
    expect_workers_max_wait_s: int = 120,
    loglevel: str = "INFO",
    stop_timeout_s: float = 0.0,
) -> list[str]:
    """The headless master: waits for ``workers`` workers, runs the config's shape, writes
    Locust's CSVs (with full history, one row a second) and HTML report. ``stop_timeout_s``
    lets the users' requests in flight at the end complete (and be recorded) rather than be
    cut off: the slowest requests of a run are the ones in flight when it stops."""
    if workers < 1:
        raise ValueError(f"workers is {workers}; a distributed run needs at least 1")
    return [
        *locust_cmd,
        "-f", locustfile,
        "--headless",
        "--master",
        "--expect-workers", str(workers),
        "--expect-workers-max-wait", str(expect_workers_max_wait_s),
        "--master-bind-host", bind_host,
        "--master-bind-port", str(bind_port),
        "--csv", csv_prefix,
        "--csv-full-history",
        "--html", html_path,
        "--host", origin(predict_url),
        # failed requests are measurements, not a failed run: exit 0 unless Locust broke
        "--exit-code-on-error", "0",
        "--loglevel", loglevel,
        "--caio-workers", str(workers),
        "--caio-config", config_uri,
        *(["--stop-timeout", f"{stop_timeout_s:g}"] if stop_timeout_s > 0 else []),
    ]


def worker_argv(
    *,
    locust_cmd: Sequence[str],
    locustfile: str,
    config_uri: str,
    master_host: str,
    master_port: int = DEFAULT_MASTER_PORT,
    loglevel: str = "INFO",
    workers: int = 1,
    worker_index: int | None = None,
) -> list[str]:
    """A worker of ``workers``. ``worker_index`` (0..workers-1) picks its share of an
    open_rate schedule; ``None`` leaves it to ``JOB_COMPLETION_INDEX`` (an Indexed GKE Job,
    whose pods share one argv)."""
    argv = [
        *locust_cmd,
        "-f", locustfile,
        "--worker",
        "--master-host", master_host,
        "--master-port", str(master_port),
        "--loglevel", loglevel,
        "--caio-workers", str(workers),
        "--caio-config", config_uri,
    ]
    if worker_index is not None:
        if not 0 <= worker_index < workers:
            raise ValueError(f"worker_index {worker_index} must be in 0..{workers - 1}")
        argv += ["--caio-worker-index", str(worker_index)]
    return argv


def build_launch_spec(
    *,
    config: Mapping[str, Any],
    config_uri: str,
    locust_cmd: Sequence[str],
    locustfile: str,
    workers: int,
    csv_prefix: str,
    html_path: str,
    log_dir: str,
    master_host: str = "127.0.0.1",
    bind_host: str = "127.0.0.1",
    master_port: int = DEFAULT_MASTER_PORT,
    grace_s: float = 30.0,
    expect_workers_max_wait_s: int = 120,
    env: Mapping[str, str] | None = None,
    publish_uri: str | None = None,
    index_workers: bool = True,
) -> LaunchSpec:
    """Master and worker argv for ``config`` (the dict written at ``config_uri``).

    ``index_workers``: give each worker its index in its argv (local processes); ``False``
    keeps every worker argv equal (GKE pods take it from the Indexed Job instead)."""
    common: dict[str, Any] = {"locust_cmd": list(locust_cmd), "locustfile": locustfile,
                              "config_uri": config_uri}
    shape = config["shape"]
    # closed loop: let each user's last request finish; open loop has its own drain_s
    stop_timeout = 0.0 if "drain_s" in shape else float(config.get("request_timeout_s", 30.0))
    master = master_argv(
        **common, predict_url=config["predict_url"], workers=workers, csv_prefix=csv_prefix,
        html_path=html_path, bind_host=bind_host, bind_port=master_port,
        expect_workers_max_wait_s=expect_workers_max_wait_s, stop_timeout_s=stop_timeout,
    )
    worker_argvs = tuple(
        tuple(worker_argv(**common, master_host=master_host, master_port=master_port,
                          workers=workers, worker_index=i if index_workers else None))
        for i in range(workers))
    return LaunchSpec(
        master_argv=tuple(master),
        worker_argvs=worker_argvs,
        env={"PYTHONUNBUFFERED": "1", "CAIO_CONFIG": config_uri, **(env or {})},
        csv_prefix=csv_prefix,
        html_path=html_path,
        log_dir=log_dir,
        requests_uri=storage.join(config["output_uri"], "requests"),
        duration_s=float(shape["duration_s"]) + float(shape.get("drain_s", 0.0)) + stop_timeout,
        grace_s=grace_s,
        publish_uri=publish_uri,
        meta={"test_id": config.get("test_id", ""), "master_port": master_port,
              "shape": shape["kind"]},
    )


def make_config(
    *,
    test_id: str,
    predict_url: str,
    protocol: str,
    signature: str,
    payload_uri: str,
    output_uri: str,
    load_shape: str,
    users: int,
    spawn_rate: float,
    duration_s: float,
    step_users: int = 1,
    step_duration_s: float = 1,
    think_time_s: float = 0.0,
    project_id: str = "local",
    model: str = "",
    version: str = "",
    flush_interval_s: float = 5.0,
    request_timeout_s: float = 30.0,
    instances_per_request: int = 1,
    rate: float = 10.0,
    arrivals: str = "constant",
    max_in_flight: int = 256,
    rate_profile: Mapping[str, Any] | None = None,
    peak: Mapping[str, Any] | None = None,
    record_sample: float = 1.0,
) -> dict[str, Any]:
    """The test config the locustfile reads (``--caio-config``), checked by the locustfile's
    own ``parse_config`` (``loadgen.locust_config``). Raises ``ValueError`` naming the first
    bad field.

    ``load_shape="open_rate"`` sends ``rate`` req/s (``arrivals`` constant or poisson) with
    at most ``max_in_flight`` requests in flight per worker; ``users``, ``spawn_rate`` and
    ``think_time_s`` are then not used. ``rate_profile``: ``{"rate_profile": "staircase",
    "step_rate"}`` (steps of ``step_duration_s``) or ``{"rate_profile": "spike",
    "spike_rate", "spike_start_s", "spike_duration_s"}``; default constant. Its shape gets
    ``drain_s`` (the request timeout, at most 3 s) after ``duration_s`` for the last
    requests to complete. ``load_shape="peak_search"`` starts at ``rate`` with ``peak``
    settings (``PEAK_SETTINGS``; the ones not given take the run params' defaults; see
    ``locust/caio_peak.py``). ``record_sample``: the share of successful requests kept as
    raw records (failures are all kept; the workers' histograms count every request)."""
    shape: dict[str, Any] = {"kind": load_shape, "users": _int(users),
                             "spawn_rate": _float(spawn_rate), "duration_s": _float(duration_s)}
    if load_shape in ("open_rate", "peak_search"):
        shape = {"kind": load_shape, "rate": _float(rate), "arrivals": arrivals,
                 "max_in_flight": _int(max_in_flight), "duration_s": _float(duration_s),
                 "drain_s": min(_float(request_timeout_s), 3.0)}
    if load_shape == "open_rate":
        shape.update(_rate_profile(dict(rate_profile or {}), step_duration_s))
    if load_shape == "peak_search":
        shape.update(_peak_settings(dict(peak or {})))
    if load_shape == "staircase":
        shape.update(step_users=_int(step_users), step_duration_s=_float(step_duration_s))
    return check_config({
        "config_version": config_version(),
        "test_id": test_id,
        "project_id": project_id,
        "model": model,
        "version": version,
        "protocol": protocol,
        "predict_url": predict_url,
        "signature": signature,
        "payload_uri": payload_uri,
        "output_uri": output_uri,
        "shape": shape,
        "think_time_s": _float(think_time_s),
        "flush_interval_s": _float(flush_interval_s),
        "request_timeout_s": _float(request_timeout_s),
        "instances_per_request": _int(instances_per_request),
        "record_sample": _float(record_sample),
    })


def _float(value: Any) -> Any:
    """A number as a float, anything else as it is (for the check to name)."""
    return float(value) if _is_number(value) else value


def _int(value: Any) -> Any:
    return int(value) if _is_number(value) else value


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _rate_profile(profile: dict[str, Any], step_duration_s: float) -> dict[str, Any]:
    kind = profile.get("rate_profile", "constant")
    needs = {"staircase": ("step_rate",),
             "spike": ("spike_rate", "spike_start_s", "spike_duration_s")}.get(kind, ())
    out: dict[str, Any] = {"rate_profile": kind}
    out.update({name: _float(profile.get(name)) for name in needs})
    if kind == "staircase":
        out["step_duration_s"] = _float(step_duration_s)
    return out


#: A peak search's settings in the config document -> the run params they come from (the
#: params' declarations hold their defaults).
PEAK_SETTINGS = {"slo_ms": "slo_ms", "slo_percentile": "slo_percentile",
                 "max_error_rate": "max_error_rate", "max_rate": "max_rate",
                 "precision": "peak_precision", "window_s": "window_s",
                 "min_requests": "min_requests"}


def _peak_settings(peak: dict[str, Any]) -> dict[str, Any]:
    from caio_operators.spec import RunSpec

    unknown = sorted(set(peak) - set(PEAK_SETTINGS))
    if unknown:
        raise ValueError(f"unknown peak settings {unknown}; use {', '.join(PEAK_SETTINGS)}")
    defaults = {f.name: f.default for f in fields(RunSpec)}
    out = {name: peak.get(name, defaults[param]) for name, param in PEAK_SETTINGS.items()}
    return {k: _int(v) if k == "min_requests" else _float(v) for k, v in out.items()}


def build_config(spec: Any, deployment: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """``make_config`` for one run: a RunSpec (load knobs, where the run's files go) and the
    Deployment dict from the deploy task (``predict_url``, ``protocol``)."""
    layout = spec.layout
    kwargs: dict[str, Any] = {
        "test_id": spec.run_id,
        "project_id": deployment.get("project") or spec.project,
        "model": deployment.get("model_name") or spec.model_name,
        "version": deployment.get("model_version") or spec.model_version,
        "protocol": deployment.get("protocol") or spec.protocol,
        "predict_url": deployment["predict_url"],
        "signature": spec.signature, "payload_uri": layout.payload_uri,
        "output_uri": layout.load_dir, "load_shape": spec.load_shape, "users": spec.users,
        "spawn_rate": spec.spawn_rate, "duration_s": spec.duration_s,
        "step_users": spec.step_users, "step_duration_s": spec.step_duration_s,
        "think_time_s": spec.think_time_s, "instances_per_request": spec.instances_per_request,
        "rate": spec.rate, "arrivals": spec.arrivals, "max_in_flight": spec.max_in_flight,
        "rate_profile": {"rate_profile": spec.rate_profile, "step_rate": spec.step_rate,
                         "spike_rate": spec.spike_rate, "spike_start_s": spec.spike_start_s,
                         "spike_duration_s": spec.spike_duration_s},
        "peak": {name: getattr(spec, param) for name, param in PEAK_SETTINGS.items()},
        "record_sample": spec.record_sample, "request_timeout_s": spec.request_timeout_s,
    }
    kwargs.update(overrides)
    return make_config(**kwargs)


def write_config(uri: str, config: Mapping[str, Any]) -> str:
    """Write the test config JSON atomically; returns ``uri``."""
    return storage.write_text(uri, json.dumps(dict(config), indent=2, sort_keys=True))

"""RunSpec: the one validated configuration object of a benchmark run.

``param_schema()`` is the single source of the knobs: the DAG turns it into Airflow ``Param``
objects (so the Trigger form shows every field with its type, range and help text) and
``validate_params`` checks a run's params against the same JSON schema plus the rules a schema
cannot express (cross-field constraints, URI forms, identifiers). Nothing is created before
validation passes, and every problem is reported at once with the field name and what is
accepted.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from caio_operators.layout import RunLayout, model_uri
from caio_operators.metrics.gpu import PATTERN as GPU_PATTERN

TARGETS = ("local", "endpoint", "vertex", "caip")
CLOUD_TARGETS = ("vertex", "caip")
PROTOCOLS = ("caip", "vertex", "tfserving")
SIGNATURES = ("serving_preprocess", "serving_default")
LOAD_SHAPES = ("constant", "staircase", "open_rate", "peak_search")
OPEN_LOOP_SHAPES = ("open_rate", "peak_search")
ARRIVALS = ("constant", "poisson")
RATE_PROFILES = ("constant", "staircase", "spike")
LOAD_RUNNERS = ("local", "gke")
BUCKET_SCHEMES = ("file", "gs")
REGRESSION_PERCENTILES = ("p50", "p95", "p99")
WAREHOUSE_SCHEMES = ("duckdb", "bigquery")

# AI Platform / Vertex identifiers: a letter, then letters, digits and underscores.
_IDENT = r"^[A-Za-z][A-Za-z0-9_]{0,62}$"
_IDENT_OR_EMPTY = r"^([A-Za-z][A-Za-z0-9_]{0,62})?$"
_RUN_ID_OR_EMPTY = r"^([a-z0-9][a-z0-9-]{0,62})?$"  # make_run_id's form
_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


class SpecError(ValueError):
    """Invalid run parameters; ``problems`` lists one message per field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "invalid run parameters:\n  - " + "\n  - ".join(problems)
            + "\nFix the values above (Trigger form or --conf JSON) and trigger again."
        )


#: The JSON type of a string param whose empty default means "not set" (see param_schema).
OPTIONAL_STRING = ["string", "null"]

LOCAL_MAX_REPLICAS = 16  # replica processes of the local server


def param_schema(local_root: str | Path, images_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every knob of a run as ``name -> JSON schema`` (with ``default`` and ``section``).

    ``local_root`` is where the default ``file://`` bucket and DuckDB warehouse live;
    ``images_dir`` holds the sample images used for payloads and the export check.
    """
    root = Path(local_root)
    model = "Model"
    deploy = "Deployment"
    load = "Load"
    store = "Storage"
    cloud = "Google Cloud"
    compare = "Comparison and cost"
    schema = {
        "model_name": {
            "default": "resnet101", "type": "string", "pattern": _IDENT, "section": model,
            "title": "Model name",
            "description": "Model resource name: a letter, then letters, digits or underscores.",
        },
        "model_version": {
            "default": "v1", "type": "string", "pattern": _IDENT, "section": model,
            "title": "Model version",
            "description": "Version name: a letter, then letters, digits or underscores.",
        },
        "model_source": {
            "default": "builtin:resnet_v2_101", "type": "string", "section": model,
            "title": "Base model",
            "description": "builtin:resnet_v2_101 (Keras ResNet101V2 architecture, untrained "
                           "offline), builtin:mobilenet_v3_small (quick), builtin:tiny (tests), "
                           "hub:<TF Hub handle>, or savedmodel:<uri>.",
            "examples": ["builtin:resnet_v2_101", "builtin:mobilenet_v3_small", "builtin:tiny",
                         "hub:https://tfhub.dev/google/imagenet/resnet_v2_101/classification/5"],
        },
        "labels_uri": {
            "default": "", "type": "string", "section": model, "title": "Labels file",
            "description": "URI of a labels file (one label per line); empty: generated names.",
        },
        "signature": {
            "default": "serving_preprocess", "type": "string", "enum": list(SIGNATURES),
            "section": model, "title": "Signature under load",
            "description": "serving_preprocess: encoded image bytes in, top-5 labels out. "
                           "serving_default: float32 [224,224,3] pixels in, logits out.",
        },
        "target": {
            "default": "local", "type": "string", "enum": list(TARGETS), "section": deploy,
            "title": "Target",
            "description": "local: a model server on this machine. endpoint: an existing "
                           "endpoint URL (nothing is deployed). vertex: a Vertex AI endpoint. "
                           "caip: an AI Platform Prediction version. Cloud targets need a "
                           "gs:// bucket, a project and a region.",
        },
        "endpoint_url": {
            "default": "", "type": "string", "section": deploy, "title": "Endpoint URL",
            "description": "Full predict URL of an existing endpoint (target=endpoint).",
        },
        "protocol": {
            "default": "caip", "type": "string", "enum": list(PROTOCOLS), "section": deploy,
            "title": "Endpoint protocol",
            "description": "Request/response convention of endpoint_url: caip (AI Platform "
                           "Prediction v1), vertex (Vertex AI), tfserving (TF Serving REST).",
        },
        "replicas": {
            "default": 2, "type": "integer", "minimum": 1, "maximum": LOCAL_MAX_REPLICAS,
            "section": deploy,
            "title": "Replicas", "description": "Local model server processes.",
        },
        "server_threads": {
            "default": 0, "type": "integer", "minimum": 0, "maximum": 64, "section": deploy,
            "title": "Threads per replica",
            "description": "TensorFlow intra-op threads per replica; 0 = cores / replicas.",
        },
        "local_autoscaling": {
            "default": False, "type": "boolean", "section": deploy,
            "title": "Autoscale (local)",
            "description": "Local server: start and stop replicas between min_replicas and "
                           "max_replicas to keep their CPU at autoscaling_target, as Vertex "
                           "AI does; replicas is the starting count.",
        },
        "scale_up_window_s": {
            "default": 10, "type": "integer", "minimum": 0, "maximum": 3600, "section": deploy,
            "title": "Scale-out window (s)",
            "description": "Local autoscaling: scale out once the CPU has been above the "
                           "target this long.",
        },
        "scale_down_window_s": {
            "default": 30, "type": "integer", "minimum": 0, "maximum": 3600,
            "section": deploy, "title": "Scale-in cool-down (s)",
            "description": "Local autoscaling: scale in once the CPU has been below the "
                           "target this long, and this long after the last change.",
        },
        "server_batch_max": {
            "default": 0, "type": "integer", "minimum": 0, "maximum": 256, "section": deploy,
            "title": "Dynamic batching",
            "description": "Local server: run the instances of concurrent requests in one "
                           "model call, up to this many; 0 = off (one call per request).",
        },
        "server_batch_timeout_ms": {
            "default": 2.0, "type": "number", "minimum": 0, "maximum": 1000, "section": deploy,
            "title": "Batching wait (ms)",
            "description": "With server_batch_max > 1: how long the oldest queued request "
                           "waits for others to fill its model call.",
        },
        "local_gpus": {
            "default": "", "type": "string", "section": deploy, "title": "GPUs (local)",
            "description": "Local server: the GPUs the replicas use. Empty: not pinned (each "
                           "sees every GPU); none: CPU only; all, or NVML indices like 0,1: "
                           "replica i runs on device i mod n (CUDA_VISIBLE_DEVICES). Their "
                           "utilisation, memory and power are sampled (docs/gpu.md).",
        },
        "load_shape": {
            "default": "staircase", "type": "string", "enum": list(LOAD_SHAPES), "section": load,
            "title": "Load shape",
            "description": "constant: `users` users for duration_s. staircase: step_users more "
                           "users every step_duration_s up to `users`. open_rate: requests "
                           "sent at `rate` req/s (see rate_profile) whatever the server does "
                           "(open loop: latency counted from each request's intended send "
                           "time); users, spawn_rate and think_time_s are ignored. "
                           "peak_search: open loop from `rate`, stepping up then bisecting to "
                           "the highest rate that keeps the slo_percentile latency under "
                           "slo_ms and errors under max_error_rate; duration_s is its budget.",
        },
        "rate": {
            "default": 10.0, "type": "number", "exclusiveMinimum": 0, "maximum": 100000,
            "section": load, "title": "Arrival rate (req/s)",
            "description": "open_rate: target requests per second (the top or base rate of a "
                           "staircase or spike profile), split across the workers. "
                           "peak_search: the first rate tried.",
        },
        "rate_profile": {
            "default": "constant", "type": "string", "enum": list(RATE_PROFILES),
            "section": load, "title": "Rate profile",
            "description": "open_rate: constant `rate`; staircase: step_rate req/s more every "
                           "step_duration_s up to `rate`; spike: `rate` with spike_rate for "
                           "spike_duration_s from spike_start_s.",
        },
        "step_rate": {
            "default": 5.0, "type": "number", "exclusiveMinimum": 0, "maximum": 100000,
            "section": load, "title": "Rate per step (req/s)",
            "description": "open_rate staircase: req/s added at each step (and the first step).",
        },
        "spike_rate": {
            "default": 50.0, "type": "number", "exclusiveMinimum": 0, "maximum": 100000,
            "section": load, "title": "Spike rate (req/s)",
            "description": "open_rate spike: the rate during the spike.",
        },
        "spike_start_s": {
            "default": 20, "type": "integer", "minimum": 1, "maximum": 86400, "section": load,
            "title": "Spike start (s)", "description": "open_rate spike: when the spike starts.",
        },
        "spike_duration_s": {
            "default": 10, "type": "integer", "minimum": 1, "maximum": 86400, "section": load,
            "title": "Spike length (s)", "description": "open_rate spike: how long it lasts.",
        },
        "slo_ms": {
            "default": 500.0, "type": "number", "exclusiveMinimum": 0, "maximum": 600000,
            "section": load, "title": "SLO latency (ms)",
            "description": "peak_search: the slo_percentile latency must stay under this.",
        },
        "slo_percentile": {
            "default": 99.0, "type": "number", "minimum": 50, "maximum": 99.99,
            "section": load, "title": "SLO percentile",
            "description": "peak_search: which latency percentile the SLO applies to.",
        },
        "max_error_rate": {
            "default": 0.01, "type": "number", "minimum": 0, "maximum": 1, "section": load,
            "title": "Max error rate",
            "description": "peak_search: highest share of failed or dropped requests a rate "
                           "may have and still pass.",
        },
        "max_rate": {
            "default": 0.0, "type": "number", "minimum": 0, "maximum": 100000,
            "section": load, "title": "Max rate (req/s)",
            "description": "peak_search: never offer more than this; 0 = no cap.",
        },
        "peak_precision": {
            "default": 0.05, "type": "number", "minimum": 0.005, "maximum": 0.5,
            "section": load, "title": "Search precision",
            "description": "peak_search: stop bisecting when the failing rate is within this "
                           "fraction of the passing one.",
        },
        "window_s": {
            "default": 5, "type": "integer", "minimum": 1, "maximum": 600, "section": load,
            "title": "Window (s)",
            "description": "peak_search: measurement window; a rate passes after 3 consecutive "
                           "windows within 10% of each other in throughput and latency.",
        },
        "min_requests": {
            "default": 50, "type": "integer", "minimum": 1, "maximum": 1000000,
            "section": load, "title": "Min requests per window",
            "description": "peak_search: a window counts only with this many requests (or half "
                           "of what the rate puts in a window, if fewer).",
        },
        "arrivals": {
            "default": "constant", "type": "string", "enum": list(ARRIVALS), "section": load,
            "title": "Arrivals",
            "description": "open_rate: constant (evenly spaced sends) or poisson (random, "
                           "exponential gaps at the same mean rate).",
        },
        "max_in_flight": {
            "default": 256, "type": "integer", "minimum": 1, "maximum": 100000,
            "section": load, "title": "Max in flight",
            "description": "open_rate: requests in flight per worker (and its connection pool); "
                           "a send that would exceed it is dropped and counted as a failure.",
        },
        "record_sample": {
            "default": 1.0, "type": "number", "exclusiveMinimum": 0, "maximum": 1,
            "section": load, "title": "Raw records kept",
            "description": "Share of successful requests kept as raw records (failures are "
                           "all kept). Counts, rates and percentiles come from the workers' "
                           "histograms, which see every request: lower it for long, fast "
                           "runs (an hour at 10k req/s is 36M records).",
        },
        "users": {
            "default": 8, "type": "integer", "minimum": 1, "maximum": 10000, "section": load,
            "title": "Users", "description": "Concurrent users (the staircase's top step).",
        },
        "spawn_rate": {
            "default": 4.0, "type": "number", "exclusiveMinimum": 0, "maximum": 1000,
            "section": load, "title": "Spawn rate", "description": "Users started per second.",
        },
        "duration_s": {
            "default": 80, "type": "integer", "minimum": 5, "maximum": 86400, "section": load,
            "title": "Duration (s)", "description": "Length of the load test.",
        },
        "step_users": {
            "default": 2, "type": "integer", "minimum": 1, "maximum": 10000, "section": load,
            "title": "Users per step", "description": "Staircase: users added at each step.",
        },
        "step_duration_s": {
            "default": 20, "type": "integer", "minimum": 1, "maximum": 86400, "section": load,
            "title": "Step duration (s)", "description": "Staircase: seconds per step.",
        },
        "think_time_s": {
            "default": 0.0, "type": "number", "minimum": 0, "maximum": 60, "section": load,
            "title": "Think time (s)",
            "description": "Pause between a user's requests; 0 keeps the server busy.",
        },
        "workers": {
            "default": 1, "type": "integer", "minimum": 1, "maximum": 64, "section": load,
            "title": "Locust workers",
            "description": "Worker processes (or pods) under one master.",
        },
        "instances_per_request": {
            "default": 1, "type": "integer", "minimum": 1, "maximum": 64, "section": load,
            "title": "Instances per request",
            "description": "Images batched into one predict request.",
        },
        "images_uri": {
            "default": str(Path(images_dir).resolve()), "type": "string", "section": load,
            "title": "Images", "description": "Folder of sample images for payloads and checks.",
        },
        "bucket": {
            "default": "file://" + str(root / "bucket"), "type": "string", "section": store,
            "title": "Bucket",
            "description": "Where models, raw records, tables and reports go: file:///abs/path "
                           "or gs://bucket/prefix.",
        },
        "warehouse": {
            "default": "duckdb://" + str(root / "warehouse.duckdb"), "type": "string",
            "section": store, "title": "Warehouse",
            "description": "Results database: duckdb:///abs/path.duckdb or "
                           "bigquery://project/dataset.",
        },
        "load_runner": {
            "default": "local", "type": "string", "enum": list(LOAD_RUNNERS), "section": load,
            "title": "Load runner",
            "description": "local: Locust master and workers as processes here. gke: as pods on "
                           "the GKE cluster below.",
        },
        "project": {
            "default": "", "type": "string", "section": cloud, "title": "Project",
            "description": "Google Cloud project id (cloud targets, gs://, bigquery://, gke).",
        },
        "region": {
            "default": "us-central1", "type": "string", "section": cloud, "title": "Region",
            "description": "Region of the Vertex AI endpoint or AI Platform model.",
        },
        "gcp_conn_id": {
            "default": "google_cloud_default", "type": "string", "section": cloud,
            "title": "Connection", "description": "Airflow connection for Google Cloud.",
        },
        "impersonation_chain": {
            "default": "", "type": "string", "section": cloud, "title": "Impersonate",
            "description": "Service account(s) to impersonate, comma-separated; empty: none.",
        },
        "machine_type": {
            "default": "n1-standard-4", "type": "string", "section": cloud,
            "title": "Machine type", "description": "Serving machine type (cloud targets).",
        },
        "accelerator_type": {
            "default": "", "type": "string", "section": cloud, "title": "Accelerator",
            "description": "e.g. NVIDIA_TESLA_T4; empty: CPU only.",
        },
        "accelerator_count": {
            "default": 0, "type": "integer", "minimum": 0, "maximum": 8, "section": cloud,
            "title": "Accelerators", "description": "Accelerators per node.",
        },
        "min_replicas": {
            "default": 1, "type": "integer", "minimum": 1, "maximum": 1000, "section": cloud,
            "title": "Min replicas", "description": "Autoscaling lower bound (cloud targets).",
        },
        "max_replicas": {
            "default": 2, "type": "integer", "minimum": 1, "maximum": 1000, "section": cloud,
            "title": "Max replicas", "description": "Autoscaling upper bound (cloud targets).",
        },
        "autoscaling_target": {
            "default": 60, "type": "integer", "minimum": 1, "maximum": 100, "section": cloud,
            "title": "Autoscaling target (%)",
            "description": "CPU (or accelerator duty cycle) utilisation that triggers scaling.",
        },
        "runtime_version": {
            "default": "2.11", "type": "string", "section": cloud, "title": "Runtime version",
            "description": "AI Platform Prediction runtime version (target=caip).",
        },
        "serving_container_image": {
            "default": "", "type": "string", "section": cloud, "title": "Serving image",
            "description": "Vertex AI serving container; empty: the prebuilt TF 2 image "
                           "(CPU or GPU to match the accelerator).",
        },
        "monitoring_wait_s": {
            "default": 300, "type": "integer", "minimum": 0, "maximum": 3600,
            "section": cloud, "title": "Wait for Monitoring (s)",
            "description": "Cloud targets: how long harvest may wait after the load window's "
                           "end for Cloud Monitoring's late points (they arrive minutes after "
                           "the fact); 0: read once. A run harvested before they all arrived "
                           "is degraded and says so; clear its harvest task later to complete "
                           "it.",
        },
        "gke_location": {
            "default": "", "type": "string", "section": cloud, "title": "GKE location",
            "description": "Region or zone of the GKE cluster (load_runner=gke).",
        },
        "gke_cluster": {
            "default": "", "type": "string", "section": cloud, "title": "GKE cluster",
            "description": "GKE cluster running Locust (load_runner=gke).",
        },
        "gke_namespace": {
            "default": "default", "type": "string", "section": cloud, "title": "GKE namespace",
            "description": "Kubernetes namespace for the Locust pods.",
        },
        "locust_image": {
            "default": "", "type": "string", "section": cloud, "title": "Locust image",
            "description": "Image built from locust/Dockerfile (load_runner=gke).",
        },
        "baseline_version": {
            "default": "", "type": "string", "pattern": _IDENT_OR_EMPTY, "section": compare,
            "title": "Baseline version",
            "description": "Compare with the latest successful run of this version of the "
                           "same model that measured the same benchmark (target settings, "
                           "payload, load: runs.fingerprint); empty: the previous such run "
                           "of the same version and model source.",
        },
        "baseline_run_id": {
            "default": "", "type": "string", "pattern": _RUN_ID_OR_EMPTY, "section": compare,
            "title": "Baseline run",
            "description": "Compare with this run (a run_id of the warehouse's runs table) "
                           "instead; a run that measured another benchmark gets the verdict "
                           "'not comparable'. Empty: the rule of baseline_version.",
        },
        "regression_percentile": {
            "default": "p95", "type": "string", "enum": list(REGRESSION_PERCENTILES),
            "section": compare, "title": "Percentile judged",
            "description": "Latency percentile whose change decides a regression.",
        },
        "regression_threshold_pct": {
            "default": 10.0, "type": "number", "exclusiveMinimum": 0, "maximum": 1000,
            "section": compare, "title": "Regression threshold (%)",
            "description": "A change counts when it exceeds this and its 95% bootstrap "
                           "interval excludes zero.",
        },
        "fail_on_regression": {
            "default": False, "type": "boolean", "section": compare,
            "title": "Fail on regression",
            "description": "true: a regression fails the DAG run; false: it only warns.",
        },
        "price_table": {
            "default": "", "type": "string", "section": compare, "title": "Price table",
            "description": "JSON price table (file:// or gs://): hourly price per machine type "
                           "and accelerator with the date taken; empty: pricing/prices.json.",
        },
        "local_machine_type": {
            "default": "", "type": "string", "section": compare, "title": "Local machine",
            "description": "Price-table machine that prices target=local; empty: cost 0.",
        },
    }
    # An empty default means "not set". The Trigger form marks a field of type "string"
    # required and will not trigger while it is empty, so these also accept null, read as "".
    for prop in schema.values():
        if prop["default"] == "" and prop["type"] == "string":
            prop["type"] = list(OPTIONAL_STRING)
    return schema


@dataclass(frozen=True)
class RunSpec:
    """A checked run configuration. Travels between tasks as ``to_dict()``."""

    run_id: str
    dag_id: str
    airflow_run_id: str
    model_name: str
    model_version: str
    model_source: str
    labels_uri: str
    signature: str
    target: str
    endpoint_url: str
    protocol: str
    replicas: int
    server_threads: int
    load_shape: str
    users: int
    spawn_rate: float
    duration_s: int
    step_users: int
    step_duration_s: int
    think_time_s: float
    workers: int
    instances_per_request: int
    images_uri: str
    bucket: str
    warehouse: str
    load_runner: str = "local"
    project: str = ""
    region: str = "us-central1"
    gcp_conn_id: str = "google_cloud_default"
    impersonation_chain: str = ""
    machine_type: str = "n1-standard-4"
    accelerator_type: str = ""
    accelerator_count: int = 0
    min_replicas: int = 1
    max_replicas: int = 2
    local_autoscaling: bool = False
    scale_up_window_s: int = 10
    scale_down_window_s: int = 30
    autoscaling_target: int = 60
    runtime_version: str = "2.11"
    serving_container_image: str = ""
    monitoring_wait_s: int = 300
    gke_location: str = ""
    gke_cluster: str = ""
    gke_namespace: str = "default"
    locust_image: str = ""
    rate: float = 10.0
    arrivals: str = "constant"
    max_in_flight: int = 256
    rate_profile: str = "constant"
    step_rate: float = 5.0
    spike_rate: float = 50.0
    spike_start_s: int = 20
    spike_duration_s: int = 10
    slo_ms: float = 500.0
    slo_percentile: float = 99.0
    max_error_rate: float = 0.01
    max_rate: float = 0.0
    peak_precision: float = 0.05
    window_s: int = 5
    min_requests: int = 50
    record_sample: float = 1.0
    baseline_version: str = ""
    baseline_run_id: str = ""
    regression_percentile: str = "p95"
    regression_threshold_pct: float = 10.0
    fail_on_regression: bool = False
    price_table: str = ""
    local_machine_type: str = ""
    server_batch_max: int = 0
    server_batch_timeout_ms: float = 2.0
    local_gpus: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.bucket, self.run_id)

    @property
    def impersonation(self) -> list[str] | None:
        """``impersonation_chain`` as the provider hooks take it."""
        chain = [a.strip() for a in self.impersonation_chain.split(",") if a.strip()]
        return chain or None

    @property
    def model_uri(self) -> str:
        return model_uri(self.bucket, self.model_name, self.model_version)

    def params(self) -> dict[str, Any]:
        """The user-facing knobs (what is stored with the run)."""
        skip = {"run_id", "dag_id", "airflow_run_id", "extra"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def make_run_id(model_name: str, model_version: str, airflow_run_id: str) -> str:
    """A run key safe for paths, labels and table rows: ``[a-z0-9-]``, at most 63 chars.

    Derived from the Airflow run id, so a retry of the same DAG run reuses it (its rows
    are replaced, not duplicated) while another DAG run gets its own.
    """
    raw = f"{model_name}-{model_version}-{airflow_run_id}".lower()
    slug = re.sub(r"[^a-z0-9]+", "-", raw).strip("-")
    if len(slug) <= 63:
        return slug
    digest = hashlib.sha1(raw.encode()).hexdigest()[:8]  # noqa: S324 (a name, not security)
    return f"{slug[:54].rstrip('-')}-{digest}"


def run_key(airflow_run_id: str, logical_date: Any = None) -> str:
    """What a run's id derives from: its logical date when it has one, else its Airflow
    run id. A scheduled run and a backfill (or ``dags test``) run of the same date then
    share one key, so re-running a date replaces its rows instead of adding a copy, while
    manual triggers stay unique (their logical date is the trigger time, or none)."""
    if logical_date is None:
        return airflow_run_id
    return logical_date.isoformat() if hasattr(logical_date, "isoformat") else str(logical_date)


def _schema_problems(params: Mapping[str, Any], schema: dict[str, dict[str, Any]]) -> list[str]:
    import jsonschema

    problems = []
    for name, prop in schema.items():
        if name not in params:
            continue
        rules = {k: v for k, v in prop.items() if k not in ("default", "section", "examples")}
        validator = jsonschema.Draft7Validator(rules)
        for err in validator.iter_errors(params[name]):
            accepted = _accepted(prop)
            problems.append(f"{name}={params[name]!r}: {err.message}" + (
                f" (accepted: {accepted})" if accepted else ""))
            break
    return problems


def _accepted(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return ", ".join(map(str, prop["enum"]))
    if "minimum" in prop or "maximum" in prop or "exclusiveMinimum" in prop:
        low = prop.get("minimum", prop.get("exclusiveMinimum"))
        op = ">" if "exclusiveMinimum" in prop else ">="
        high = prop.get("maximum")
        return f"{prop['type']} {op} {low}" + (f" and <= {high}" if high is not None else "")
    if prop.get("pattern") == _RUN_ID_OR_EMPTY:
        return "a run_id: lowercase letters, digits and dashes, or empty"
    if "pattern" in prop:
        return "a letter, then up to 62 letters, digits or underscores"
    return ""


def _uri_problems(name: str, value: str, schemes: tuple[str, ...]) -> list[str]:
    parsed = urlparse(value)
    form = {"file": "file:///absolute/path", "gs": "gs://bucket/prefix",
            "duckdb": "duckdb:///absolute/path.duckdb",
            "bigquery": "bigquery://project/dataset[?location=EU]"}
    accepted = " or ".join(form[s] for s in schemes)
    if parsed.scheme not in schemes:
        return [f"{name}={value!r}: unsupported scheme {parsed.scheme or '(none)'!r} "
                f"(accepted: {accepted})"]
    if any(c in value for c in "\n\r\0;`$|&<>\"'\\"):
        return [f"{name}={value!r}: contains characters not allowed in a URI "
                f"(accepted: {accepted})"]
    if parsed.scheme in ("file", "duckdb"):
        if parsed.netloc or not parsed.path.startswith("/"):
            return [f"{name}={value!r}: needs an absolute path after '{parsed.scheme}://' "
                    f"(accepted: {accepted})"]
        if ".." in Path(parsed.path).parts:
            return [f"{name}={value!r}: '..' is not allowed (accepted: {accepted})"]
    if parsed.scheme == "gs" and not _GCS_BUCKET.match(parsed.netloc or ""):
        return [f"{name}={value!r}: {parsed.netloc!r} is not a valid bucket name "
                f"(accepted: {accepted})"]
    if parsed.scheme == "bigquery":
        # pure URI parsing (no Google library), imported here to keep DAG parsing light
        from caio_operators.results.warehouse import WarehouseError
        from caio_operators.results.warehouse.bigquery import parse_uri

        try:
            parse_uri(value)
        except WarehouseError as exc:
            return [f"{name}={value!r}: {exc} (accepted: {accepted})"]
    return []


def _rule_problems(p: Mapping[str, Any]) -> list[str]:
    from caio_operators.model.sources import ModelSourceError, parse_source

    problems: list[str] = []
    try:
        parse_source(p["model_source"])
    except ModelSourceError as exc:
        problems.append(f"model_source={p['model_source']!r}: {exc}")
    problems += _uri_problems("bucket", p["bucket"], BUCKET_SCHEMES)
    problems += _uri_problems("warehouse", p["warehouse"], WAREHOUSE_SCHEMES)
    if p["labels_uri"]:
        problems += _uri_problems("labels_uri", p["labels_uri"], BUCKET_SCHEMES)
    if p.get("price_table"):
        problems += _uri_problems("price_table", p["price_table"], BUCKET_SCHEMES)
    images = p["images_uri"]
    if "://" in images:
        problems += _uri_problems("images_uri", images, BUCKET_SCHEMES)
    elif not Path(images).is_absolute():
        problems.append(f"images_uri={images!r}: needs an absolute path or a file:// / gs:// URI")
    if p["target"] == "local" and not p["bucket"].startswith("file://"):
        problems.append(f"bucket={p['bucket']!r}: target=local serves from and records to this "
                        "machine (accepted: file:///absolute/path)")
    if p["target"] == "endpoint":
        url = urlparse(p["endpoint_url"])
        if url.scheme not in ("http", "https") or not url.netloc:
            problems.append(
                f"endpoint_url={p['endpoint_url']!r}: target=endpoint needs the full predict URL "
                "of the existing endpoint (accepted: http(s)://host[:port]/path)")
    elif p["endpoint_url"]:
        problems.append(f"endpoint_url={p['endpoint_url']!r}: only used with target=endpoint "
                        f"(target is {p['target']!r}); leave it empty")
    if p["server_batch_max"] > 1 and p["target"] != "local":
        problems.append(f"server_batch_max={p['server_batch_max']}: only the local model "
                        f"server batches (target is {p['target']!r}); leave it 0")
    problems += _gpu_problems(p)
    if p["load_shape"] == "staircase":
        if p["step_users"] > p["users"]:
            problems.append(f"step_users={p['step_users']}: larger than users={p['users']} "
                            "(accepted: 1 <= step_users <= users)")
        if p["step_duration_s"] > p["duration_s"]:
            problems.append(f"step_duration_s={p['step_duration_s']}: longer than "
                            f"duration_s={p['duration_s']} (accepted: <= duration_s)")
    if p.get("baseline_run_id") and p.get("baseline_version"):
        problems.append(f"baseline_run_id={p['baseline_run_id']!r}: names the baseline run, "
                        f"so baseline_version={p['baseline_version']!r} would be ignored; "
                        "set only one of them")
    problems += _open_loop_problems(p)
    problems += _cloud_problems(p)
    if p["load_shape"] not in OPEN_LOOP_SHAPES and p["workers"] > p["users"]:
        problems.append(f"workers={p['workers']}: more workers than users={p['users']} leaves "
                        "workers idle (accepted: workers <= users)")
    return problems


def _open_loop_problems(p: Mapping[str, Any]) -> list[str]:
    problems = []
    if p["load_shape"] == "open_rate" and p["rate_profile"] == "staircase":
        if p["step_rate"] > p["rate"]:
            problems.append(f"step_rate={p['step_rate']}: above rate={p['rate']}, the top of "
                            "the staircase (accepted: step_rate <= rate)")
        if p["step_duration_s"] > p["duration_s"]:
            problems.append(f"step_duration_s={p['step_duration_s']}: longer than "
                            f"duration_s={p['duration_s']} (accepted: <= duration_s)")
    if p["load_shape"] == "open_rate" and p["rate_profile"] == "spike" and (
            p["spike_start_s"] >= p["duration_s"]):
        problems.append(f"spike_start_s={p['spike_start_s']}: the spike must start before "
                        f"duration_s={p['duration_s']} ends")
    if p["load_shape"] == "peak_search":
        if p["max_rate"] and p["max_rate"] < p["rate"]:
            problems.append(f"max_rate={p['max_rate']}: below the starting rate={p['rate']} "
                            "(accepted: 0 for no cap, or >= rate)")
        if p["duration_s"] < 4 * p["window_s"]:
            problems.append(f"duration_s={p['duration_s']}: too short to judge even one rate "
                            f"with window_s={p['window_s']} (accepted: >= 4 x window_s; "
                            "a search usually needs 20 x or more)")
    return problems


def _gpu_problems(p: Mapping[str, Any]) -> list[str]:
    gpus = p["local_gpus"] or ""
    if gpus and p["target"] != "local":
        return [f"local_gpus={gpus!r}: only the local model server is pinned to GPUs "
                f"(target is {p['target']!r}; cloud targets: accelerator_type); leave it empty"]
    if not re.match(GPU_PATTERN, gpus):
        return [f"local_gpus={gpus!r}: not a GPU choice (accepted: empty, none, all, or "
                "device indices like 0,1)"]
    return []


_CLOUD_PATTERNS = {
    "project": (r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", "a project id like my-project-123"),
    "region": (r"^[a-z]+-[a-z]+[0-9]+$", "a region like us-central1"),
    "gke_location": (r"^[a-z]+-[a-z]+[0-9]+(-[a-z])?$", "a region or zone like us-central1-a"),
    "gke_cluster": (r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$", "a GKE cluster name"),
    "gke_namespace": (r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", "a Kubernetes namespace"),
    "machine_type": (r"^[a-z0-9][a-z0-9-]{1,62}$", "a machine type like n1-standard-4"),
    "accelerator_type": (r"^[A-Z0-9_]{0,63}$", "an accelerator like NVIDIA_TESLA_T4"),
    "runtime_version": (r"^[0-9]+\.[0-9]+$", "a runtime version like 2.11"),
    "gcp_conn_id": (r"^[A-Za-z0-9_.-]{1,250}$", "an Airflow connection id"),
    "locust_image": (r"^[a-z0-9][a-z0-9._/:@-]{0,254}$", "an image like "
                     "us-docker.pkg.dev/PROJECT/REPO/caio-locust:TAG"),
    "serving_container_image": (r"^[a-z0-9][a-z0-9._/:@-]{0,254}$", "a container image URI"),
    "impersonation_chain": (r"^[A-Za-z0-9@._,-]{0,1000}$",
                            "service account emails separated by commas"),
    "local_machine_type": (r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
                           "a price-table machine name like n1-standard-4"),
}


def _cloud_problems(p: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, (pattern, what) in _CLOUD_PATTERNS.items():
        if p[name] and not re.match(pattern, p[name]):
            problems.append(f"{name}={p[name]!r}: not {what}")
    needs_project = p["target"] in ("vertex", "caip") or p["load_runner"] == "gke" or (
        p["warehouse"].startswith("bigquery://"))
    if needs_project and not p["project"]:
        problems.append("project: required for cloud targets, gke and bigquery:// "
                        "(accepted: a project id like my-project-123)")
    if p["target"] in CLOUD_TARGETS:
        target = p["target"]
        if not p["bucket"].startswith("gs://"):
            problems.append(f"bucket={p['bucket']!r}: target={target} serves the model from "
                            "Cloud Storage (accepted: gs://bucket/prefix)")
        if not p["region"]:
            problems.append(f"region: required with target={target} "
                            "(accepted: a region like us-central1)")
    if p["load_runner"] == "gke":
        if p["target"] == "local":
            problems.append("load_runner='gke': target=local serves on 127.0.0.1 of the Airflow "
                            "worker, which GKE pods cannot reach (accepted with gke: target "
                            "vertex, caip or endpoint)")
        for name in ("gke_location", "gke_cluster", "locust_image"):
            if not p[name]:
                problems.append(f"{name}: required with load_runner=gke")
        if not p["bucket"].startswith("gs://"):
            problems.append(f"bucket={p['bucket']!r}: load_runner=gke writes results from pods "
                            "(accepted: gs://bucket/prefix)")
    if bool(p["accelerator_type"]) != (p["accelerator_count"] > 0):
        problems.append(f"accelerator_count={p['accelerator_count']}: set accelerator_type and "
                        "accelerator_count together (both empty/0 for CPU only)")
    if p["max_replicas"] < p["min_replicas"]:
        problems.append(f"max_replicas={p['max_replicas']}: below min_replicas="
                        f"{p['min_replicas']} (accepted: max_replicas >= min_replicas)")
    problems.extend(_local_autoscaling_problems(p))
    return problems


def _local_autoscaling_problems(p: Mapping[str, Any]) -> list[str]:
    if not p["local_autoscaling"]:
        return []
    if p["target"] != "local":
        return [f"local_autoscaling=true: for target=local only (target={p['target']} "
                "scales on min_replicas, max_replicas and autoscaling_target by itself)"]
    limit = LOCAL_MAX_REPLICAS
    problems = []
    if p["max_replicas"] > limit:
        problems.append(f"max_replicas={p['max_replicas']}: the local server runs at most "
                        f"{limit} replicas (accepted: 1..{limit})")
    if p["min_replicas"] >= p["max_replicas"]:
        problems.append(f"local_autoscaling=true: min_replicas={p['min_replicas']} is not "
                        f"below max_replicas={p['max_replicas']}, so nothing can scale "
                        "(accepted: min_replicas < max_replicas)")
    elif not p["min_replicas"] <= p["replicas"] <= p["max_replicas"]:
        problems.append(f"replicas={p['replicas']}: with local_autoscaling it is the "
                        f"starting count (accepted: min_replicas={p['min_replicas']} .. "
                        f"max_replicas={p['max_replicas']})")
    return problems


def validate_params(
    params: Mapping[str, Any],
    schema: dict[str, dict[str, Any]],
    *,
    dag_id: str,
    airflow_run_id: str,
    key: str | None = None,
) -> RunSpec:
    """Check ``params`` against ``schema`` and the cross-field rules; return the RunSpec.

    Raises SpecError listing every problem. Unknown keys are rejected too: a typo in a
    --conf key would otherwise silently run with the default. ``key`` (default: the Airflow
    run id) is what the run id derives from: see :func:`run_key`.
    """
    known = set(schema)
    merged = {name: prop["default"] for name, prop in schema.items()}
    unknown = sorted(set(params) - known)
    merged.update({k: "" if v is None and schema[k]["type"] == OPTIONAL_STRING else v
                   for k, v in params.items() if k in known})
    problems = [f"{k}: unknown parameter (accepted: {', '.join(sorted(known))})"
                for k in unknown]
    problems += _schema_problems(merged, schema)
    if not problems:
        problems += _rule_problems(merged)
    if problems:
        raise SpecError(problems)
    run_id = make_run_id(merged["model_name"], merged["model_version"], key or airflow_run_id)
    return RunSpec(run_id=run_id, dag_id=dag_id, airflow_run_id=airflow_run_id, **merged)


def spec_json(spec: RunSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)

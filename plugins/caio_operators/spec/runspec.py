"""RunSpec: the one validated configuration object of a run, and the one declaration of
each of its params.

Every param is a ``param(...)`` field below, in the Trigger form's order: its type (an enum
is a ``Literal`` of ``spec.declare``), default, form section, title, help text and rules.
The JSON schema and Airflow Params (``spec.schema``), the checks (``spec.checks``) and
docs/params.md's table are derived from these fields, so adding a param is one field here
plus the code that uses it.

Why one module: one declaration per param is a long list by nature (70 params), and
splitting it would scatter the Trigger form's order.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from caio_operators.layout import RunLayout, model_uri
from caio_operators.spec.declare import (
    CLOUD,
    COMPARISON,
    IDENT,
    IDENT_OR_EMPTY,
    LOAD,
    LOCAL_MAX_REPLICAS,
    MODEL,
    RUN_ID_OR_EMPTY,
    SERVING,
    STORAGE,
    Arrivals,
    LoadRunner,
    LoadShape,
    Percentile,
    ProtocolName,
    RateProfile,
    Signature,
    TargetName,
    local_bucket,
    local_warehouse,
    param,
    sample_images,
)


@dataclass(frozen=True)
class RunSpec:
    """A checked run configuration. Travels between tasks as ``to_dict()``."""

    # identity: set by validate, not params
    run_id: str
    dag_id: str
    airflow_run_id: str

    model_name: str = param(
        MODEL, "resnet101", "Model name",
        "Model resource name: a letter, then letters, digits or underscores.",
        pattern=IDENT,
    )
    model_version: str = param(
        MODEL, "v1", "Model version",
        "Version name: a letter, then letters, digits or underscores.",
        pattern=IDENT,
    )
    model_source: str = param(
        MODEL, "builtin:resnet_v2_101", "Base model",
        "builtin:resnet_v2_101 (Keras ResNet101V2 architecture, untrained offline), "
        "builtin:mobilenet_v3_small (quick), builtin:tiny (tests), hub:<TF Hub handle>, or "
        "savedmodel:<uri>.",
        examples=['builtin:resnet_v2_101', 'builtin:mobilenet_v3_small', 'builtin:tiny', 'hub:https://tfhub.dev/google/imagenet/resnet_v2_101/classification/5'],
    )
    labels_uri: str = param(
        MODEL, "", "Labels file",
        "URI of a labels file (one label per line); empty: generated names.",
    )
    signature: Signature = param(
        MODEL, "serving_preprocess", "Signature under load",
        "serving_preprocess: encoded image bytes in, top-5 labels out. serving_default: "
        "float32 [224,224,3] pixels in, logits out.",
    )
    target: TargetName = param(
        SERVING, "local", "Target",
        "local: a model server on this machine. endpoint: an existing endpoint URL (nothing "
        "is deployed). vertex: a Vertex AI endpoint. caip: an AI Platform Prediction version."
        " Cloud targets need a gs:// bucket, a project and a region.",
    )
    endpoint_url: str = param(
        SERVING, "", "Endpoint URL",
        "Full predict URL of an existing endpoint (target=endpoint).",
    )
    protocol: ProtocolName = param(
        SERVING, "caip", "Endpoint protocol",
        "Request/response convention of endpoint_url: caip (AI Platform Prediction v1), "
        "vertex (Vertex AI), tfserving (TF Serving REST).",
    )
    replicas: int = param(
        SERVING, 2, "Replicas",
        "Local model server processes.",
        minimum=1, maximum=LOCAL_MAX_REPLICAS,
    )
    server_threads: int = param(
        SERVING, 0, "Threads per replica",
        "TensorFlow intra-op threads per replica; 0 = cores / replicas.",
        minimum=0, maximum=64,
    )
    local_autoscaling: bool = param(
        SERVING, False, "Autoscale (local)",
        "Local server: start and stop replicas between min_replicas and max_replicas to keep "
        "their CPU at autoscaling_target, as Vertex AI does; replicas is the starting count.",
    )
    scale_up_window_s: int = param(
        SERVING, 10, "Scale-out window (s)",
        "Local autoscaling: scale out once the CPU has been above the target this long.",
        minimum=0, maximum=3600,
    )
    scale_down_window_s: int = param(
        SERVING, 30, "Scale-in cool-down (s)",
        "Local autoscaling: scale in once the CPU has been below the target this long, and "
        "this long after the last change.",
        minimum=0, maximum=3600,
    )
    server_batch_max: int = param(
        SERVING, 0, "Dynamic batching",
        "Local server: run the instances of concurrent requests in one model call, up to this"
        " many; 0 = off (one call per request).",
        minimum=0, maximum=256,
    )
    server_batch_timeout_ms: float = param(
        SERVING, 2.0, "Batching wait (ms)",
        "With server_batch_max > 1: how long the oldest queued request waits for others to "
        "fill its model call.",
        minimum=0, maximum=1000,
    )
    local_gpus: str = param(
        SERVING, "", "GPUs (local)",
        "Local server: the GPUs the replicas use. Empty: not pinned (each sees every GPU); "
        "none: CPU only; all, or NVML indices like 0,1: replica i runs on device i mod n "
        "(CUDA_VISIBLE_DEVICES). Their utilisation, memory and power are sampled "
        "(docs/gpu.md).",
    )
    load_shape: LoadShape = param(
        LOAD, "staircase", "Load shape",
        "constant: `users` users for duration_s. staircase: step_users more users every "
        "step_duration_s up to `users`. open_rate: requests sent at `rate` req/s (see "
        "rate_profile) whatever the server does (open loop: latency counted from each "
        "request's intended send time); users, spawn_rate and think_time_s are ignored. "
        "peak_search: open loop from `rate`, stepping up then bisecting to the highest rate "
        "that keeps the slo_percentile latency under slo_ms and errors under max_error_rate; "
        "duration_s is its budget.",
    )
    rate: float = param(
        LOAD, 10.0, "Arrival rate (req/s)",
        "open_rate: target requests per second (the top or base rate of a staircase or spike "
        "profile), split across the workers. peak_search: the first rate tried.",
        exclusiveMinimum=0, maximum=100000,
    )
    rate_profile: RateProfile = param(
        LOAD, "constant", "Rate profile",
        "open_rate: constant `rate`; staircase: step_rate req/s more every step_duration_s up"
        " to `rate`; spike: `rate` with spike_rate for spike_duration_s from spike_start_s.",
    )
    step_rate: float = param(
        LOAD, 5.0, "Rate per step (req/s)",
        "open_rate staircase: req/s added at each step (and the first step).",
        exclusiveMinimum=0, maximum=100000,
    )
    spike_rate: float = param(
        LOAD, 50.0, "Spike rate (req/s)",
        "open_rate spike: the rate during the spike.",
        exclusiveMinimum=0, maximum=100000,
    )
    spike_start_s: int = param(
        LOAD, 20, "Spike start (s)",
        "open_rate spike: when the spike starts.",
        minimum=1, maximum=86400,
    )
    spike_duration_s: int = param(
        LOAD, 10, "Spike length (s)",
        "open_rate spike: how long it lasts.",
        minimum=1, maximum=86400,
    )
    slo_ms: float = param(
        LOAD, 500.0, "SLO latency (ms)",
        "peak_search: the slo_percentile latency must stay under this.",
        exclusiveMinimum=0, maximum=600000,
    )
    slo_percentile: float = param(
        LOAD, 99.0, "SLO percentile",
        "peak_search: which latency percentile the SLO applies to.",
        minimum=50, maximum=99.99,
    )
    max_error_rate: float = param(
        LOAD, 0.01, "Max error rate",
        "peak_search: highest share of failed or dropped requests a rate may have and still "
        "pass.",
        minimum=0, maximum=1,
    )
    max_rate: float = param(
        LOAD, 0.0, "Max rate (req/s)",
        "peak_search: never offer more than this; 0 = no cap.",
        minimum=0, maximum=100000,
    )
    peak_precision: float = param(
        LOAD, 0.05, "Search precision",
        "peak_search: stop bisecting when the failing rate is within this fraction of the "
        "passing one.",
        minimum=0.005, maximum=0.5,
    )
    window_s: int = param(
        LOAD, 5, "Window (s)",
        "peak_search: measurement window; a rate passes after 3 consecutive windows within "
        "10% of each other in throughput and latency.",
        minimum=1, maximum=600,
    )
    min_requests: int = param(
        LOAD, 50, "Min requests per window",
        "peak_search: a window counts only with this many requests (or half of what the rate "
        "puts in a window, if fewer).",
        minimum=1, maximum=1000000,
    )
    arrivals: Arrivals = param(
        LOAD, "constant", "Arrivals",
        "open_rate: constant (evenly spaced sends) or poisson (random, exponential gaps at "
        "the same mean rate).",
    )
    max_in_flight: int = param(
        LOAD, 256, "Max in flight",
        "open_rate: requests in flight per worker (and its connection pool); a send that "
        "would exceed it is dropped and counted as a failure.",
        minimum=1, maximum=100000,
    )
    request_timeout_s: float = param(
        LOAD, 30.0, "Request timeout (s)",
        "How long a request may wait for its answer before it counts as a failed request "
        "(a timeout); also how long a closed-loop test lets its last requests finish. The "
        "open loop drains this long after duration_s, at most 3 s.",
        minimum=0.1, maximum=600,
    )
    record_sample: float = param(
        LOAD, 1.0, "Raw records kept",
        "Share of successful requests kept as raw records (failures are all kept). Counts, "
        "rates and percentiles come from the workers' histograms, which see every request: "
        "lower it for long, fast runs (an hour at 10k req/s is 36M records).",
        exclusiveMinimum=0, maximum=1,
    )
    users: int = param(
        LOAD, 8, "Users",
        "Concurrent users (the staircase's top step).",
        minimum=1, maximum=10000,
    )
    spawn_rate: float = param(
        LOAD, 4.0, "Spawn rate",
        "Users started per second.",
        exclusiveMinimum=0, maximum=1000,
    )
    duration_s: int = param(
        LOAD, 80, "Duration (s)",
        "Length of the load test.",
        minimum=5, maximum=86400,
    )
    step_users: int = param(
        LOAD, 2, "Users per step",
        "Staircase: users added at each step.",
        minimum=1, maximum=10000,
    )
    step_duration_s: int = param(
        LOAD, 20, "Step duration (s)",
        "Staircase: seconds per step.",
        minimum=1, maximum=86400,
    )
    think_time_s: float = param(
        LOAD, 0.0, "Think time (s)",
        "Pause between a user's requests; 0 keeps the server busy.",
        minimum=0, maximum=60,
    )
    workers: int = param(
        LOAD, 1, "Locust workers",
        "Worker processes (or pods) under one master; at most users, except with an "
        "open-loop shape.",
        minimum=1, maximum=64,
    )
    instances_per_request: int = param(
        LOAD, 1, "Instances per request",
        "Images batched into one predict request.",
        minimum=1, maximum=64,
    )
    images_uri: str = param(
        LOAD, "", "Images",
        "Folder of sample images for payloads and checks.",
        default_from=sample_images,
    )
    bucket: str = param(
        STORAGE, "", "Bucket",
        "Where models, raw records, tables and reports go: file:///abs/path or "
        "gs://bucket/prefix.",
        default_from=local_bucket,
    )
    warehouse: str = param(
        STORAGE, "", "Warehouse",
        "Results database: duckdb:///abs/path.duckdb or bigquery://project/dataset.",
        default_from=local_warehouse,
    )
    load_runner: LoadRunner = param(
        LOAD, "local", "Load runner",
        "local: Locust master and workers as processes here. gke: as pods on the GKE cluster "
        "below.",
    )
    project: str = param(
        CLOUD, "", "Project",
        "Google Cloud project id (cloud targets, gs://, bigquery://, gke).",
        form=(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", "a project id like my-project-123"),
    )
    region: str = param(
        CLOUD, "us-central1", "Region",
        "Region of the Vertex AI endpoint or AI Platform model.",
        form=(r"^[a-z]+-[a-z]+[0-9]+$", "a region like us-central1"),
    )
    gcp_conn_id: str = param(
        CLOUD, "google_cloud_default", "Connection",
        "Airflow connection for Google Cloud.",
        form=(r"^[A-Za-z0-9_.-]{1,250}$", "an Airflow connection id"),
    )
    impersonation_chain: str = param(
        CLOUD, "", "Impersonate",
        "Service account(s) to impersonate, comma-separated; empty: none.",
        form=(r"^[A-Za-z0-9@._,-]{0,1000}$", "service account emails separated by commas"),
    )
    machine_type: str = param(
        CLOUD, "n1-standard-4", "Machine type",
        "Serving machine type (cloud targets).",
        form=(r"^[a-z0-9][a-z0-9-]{1,62}$", "a machine type like n1-standard-4"),
    )
    accelerator_type: str = param(
        CLOUD, "", "Accelerator",
        "e.g. NVIDIA_TESLA_T4; empty: CPU only.",
        form=(r"^[A-Z0-9_]{0,63}$", "an accelerator like NVIDIA_TESLA_T4"),
    )
    accelerator_count: int = param(
        CLOUD, 0, "Accelerators",
        "Accelerators per node.",
        minimum=0, maximum=8,
    )
    min_replicas: int = param(
        CLOUD, 1, "Min replicas",
        "Autoscaling lower bound (cloud targets).",
        minimum=1, maximum=1000,
    )
    max_replicas: int = param(
        CLOUD, 2, "Max replicas",
        "Autoscaling upper bound (cloud targets).",
        minimum=1, maximum=1000,
    )
    autoscaling_target: int = param(
        CLOUD, 60, "Autoscaling target (%)",
        "CPU (or accelerator duty cycle) utilisation that triggers scaling.",
        minimum=1, maximum=100,
    )
    runtime_version: str = param(
        CLOUD, "2.11", "Runtime version",
        "AI Platform Prediction runtime version (target=caip).",
        form=(r"^[0-9]+\.[0-9]+$", "a runtime version like 2.11"),
    )
    serving_container_image: str = param(
        CLOUD, "", "Serving image",
        "Vertex AI serving container; empty: the prebuilt TF 2 image (CPU or GPU to match the"
        " accelerator).",
        form=(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$", "a container image URI"),
    )
    monitoring_wait_s: int = param(
        CLOUD, 300, "Wait for Monitoring (s)",
        "Cloud targets: how long harvest may wait after the load window's end for Cloud "
        "Monitoring's late points (they arrive minutes after the fact); 0: read once. A run "
        "harvested before they all arrived is degraded, and runs.monitoring_coverage says how "
        "far they reached; clear its harvest task later to complete it.",
        minimum=0, maximum=3600,
    )
    gke_location: str = param(
        CLOUD, "", "GKE location",
        "Region or zone of the GKE cluster (load_runner=gke).",
        form=(r"^[a-z]+-[a-z]+[0-9]+(-[a-z])?$", "a region or zone like us-central1-a"),
    )
    gke_cluster: str = param(
        CLOUD, "", "GKE cluster",
        "GKE cluster running Locust (load_runner=gke).",
        form=(r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$", "a GKE cluster name"),
    )
    gke_namespace: str = param(
        CLOUD, "default", "GKE namespace",
        "Kubernetes namespace for the Locust pods.",
        form=(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", "a Kubernetes namespace"),
    )
    locust_image: str = param(
        CLOUD, "", "Locust image",
        "Image built from locust/Dockerfile (load_runner=gke).",
        form=(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$",
              "an image like us-docker.pkg.dev/PROJECT/REPO/caio-locust:TAG"),
    )
    baseline_version: str = param(
        COMPARISON, "", "Baseline version",
        "Compare with the latest successful run of this version of the same model that "
        "measured the same benchmark (target settings, payload, load: runs.fingerprint); "
        "empty: the previous such run of the same version and model source.",
        pattern=IDENT_OR_EMPTY,
    )
    baseline_run_id: str = param(
        COMPARISON, "", "Baseline run",
        "Compare with this run (a run_id of the warehouse's runs table) instead; a run that "
        "measured another benchmark gets the verdict 'not comparable', and validate fails "
        "naming one the warehouse does not have. Set it or baseline_version, not both; "
        "empty: the rule of baseline_version.",
        pattern=RUN_ID_OR_EMPTY,
    )
    regression_percentile: Percentile = param(
        COMPARISON, "p95", "Percentile judged",
        "Latency percentile whose change decides a regression.",
    )
    regression_threshold_pct: float = param(
        COMPARISON, 10.0, "Regression threshold (%)",
        "A change counts when it exceeds this and its 95% bootstrap interval excludes zero.",
        exclusiveMinimum=0, maximum=1000,
    )
    fail_on_regression: bool = param(
        COMPARISON, False, "Fail on regression",
        "true: a regression fails the DAG run; false: it only warns.",
    )
    price_table: str = param(
        COMPARISON, "", "Price table",
        "JSON price table (file:// or gs://): hourly price per machine type and accelerator "
        "with the date taken; empty: pricing/prices.json.",
    )
    local_machine_type: str = param(
        COMPARISON, "", "Local machine",
        "Price-table machine that prices target=local (one machine whatever the replicas); "
        "empty: cost 0.",
        form=(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
              "a price-table machine name like n1-standard-4"),
    )
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
        return {name: getattr(self, name) for name in PARAMS}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


#: The params, in the form's order: the RunSpec fields declared with ``param(...)``.
PARAMS: dict[str, dict[str, Any]] = {
    f.name: f.metadata["param"] for f in fields(RunSpec) if "param" in f.metadata}


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

"""The locustfile's plain-Python half: test config, URI I/O, request bodies, raw records,
the Cloud Logging entries of a cloud run and the publication of Locust's own files.

Nothing here imports locust or gevent, so tests (and the Airflow side) can load this file by
path. google-auth / google-cloud-storage / google-cloud-logging are imported only when a
``gs://`` URI, a Google API host or a ``cloud_logging`` config needs them.

About 450 lines: the config document and its check move to one versioned config module in
issue 13's locustfile step; until then this file keeps them with the bodies and records.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
import os
import re
import socket
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import shapes

PROTOCOLS = ("caip", "vertex", "tfserving")
SIGNATURES = ("serving_default", "serving_preprocess")
RECORD_HEADER = ("ts", "latency_ms", "ok", "status_code", "signature", "worker", "bytes", "error")
MAX_ERROR_CHARS = 300
REQUEST_NAME_PREFIX = "predict:"  # Locust's name of a predict request: predict:<signature>

PUBLISH_ENV = "CAIO_PUBLISH_URI"  # set by the GKE launcher on the master pod
LOCUST_CSV_SUFFIXES = ("_stats.csv", "_stats_history.csv", "_failures.csv", "_exceptions.csv")
LOGGING_SCOPES = ("https://www.googleapis.com/auth/logging.write",)
MIN_LOG_INTERVAL_S = 1.0
_PROJECT = r"[a-z][a-z0-9-]{4,28}[a-z0-9]"

#: The version of the test config document this locustfile reads. The Airflow side writes
#: it (loadgen/launch.make_config) and checks the document with parse_config below; bump it
#: when a field changes meaning, so an older Locust image refuses a newer document.
CONFIG_VERSION = 1

_DEFAULTS: dict[str, Any] = {
    "config_version": CONFIG_VERSION,
    "test_id": "",
    "project_id": "local",
    "model": "",
    "version": "",
    "think_time_s": 0.0,
    "flush_interval_s": 5.0,
    "request_timeout_s": 30.0,
    "instances_per_request": 1,
    "record_sample": 1.0,
}


class ConfigError(ValueError):
    """The test config is unusable; the message names the field and what is accepted."""


# ---------------------------------------------------------------- URIs


def _split_gs(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri)
    raise ValueError(f"{uri} is not a local path or file:// URI")


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


@functools.cache
def _gcs_client():
    from google.cloud import storage  # only a cloud run needs it

    return storage.Client()


def read_uri(uri: str) -> bytes:
    """Bytes of a local path, ``file://`` URI or ``gs://`` object."""
    if uri.startswith("gs://"):
        bucket, name = _split_gs(uri)
        return _gcs_client().bucket(bucket).blob(name).download_as_bytes()
    return local_path(uri).read_bytes()


def write_uri(uri: str, data: bytes, content_type: str = "text/csv") -> str:
    """Write ``data`` whole: temp file + ``os.replace`` locally, one object upload on GCS."""
    if uri.startswith("gs://"):
        bucket, name = _split_gs(uri)
        _gcs_client().bucket(bucket).blob(name).upload_from_string(
            data, content_type=content_type)  # one object upload: whole or absent
        return uri
    target = local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return uri


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL (Locust's ``--host``)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"predict_url {url!r} must be an absolute http(s) URL, "
                          "e.g. http://127.0.0.1:8501/v1/models/m:predict")
    return f"{parsed.scheme}://{parsed.netloc}"


def needs_google_auth(url: str) -> bool:
    """Google API hosts (AI Platform, Vertex AI) want an OAuth bearer token."""
    host = urlparse(url).hostname or ""
    return host == "googleapis.com" or host.endswith(".googleapis.com")


# ---------------------------------------------------------------- config


def parse_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a test config mapping and fill defaults; raise ``ConfigError`` on the first
    problem, naming the field."""
    if not isinstance(raw, Mapping):
        raise ConfigError("the test config must be a JSON object")
    cfg = {**_DEFAULTS, **raw}
    version = cfg["config_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"config.config_version is {version!r}; it must be an integer >= 1")
    if version > CONFIG_VERSION:
        raise ConfigError(
            f"config.config_version is {version}, newer than this locustfile reads "
            f"({CONFIG_VERSION}): build the Locust image from the caio-bench release that "
            "wrote the config (locust/Dockerfile)")
    for name in ("predict_url", "payload_uri", "output_uri"):
        if not isinstance(cfg.get(name), str) or not cfg[name]:
            raise ConfigError(f"config.{name} is missing; it must be a non-empty string")
    origin(cfg["predict_url"])
    if cfg.get("protocol") not in PROTOCOLS:
        raise ConfigError(f"config.protocol is {cfg.get('protocol')!r}; use one of "
                          + ", ".join(PROTOCOLS))
    if cfg.get("signature") not in SIGNATURES:
        raise ConfigError(f"config.signature is {cfg.get('signature')!r}; use one of "
                          + ", ".join(SIGNATURES))
    shape = cfg.get("shape")
    if not isinstance(shape, Mapping):
        raise ConfigError("config.shape is missing; it must be an object with kind, users, ...")
    try:
        shapes.validate(shape)
    except ValueError as exc:
        raise ConfigError(f"config.{exc}") from None
    for name, minimum in (("think_time_s", 0.0), ("flush_interval_s", 0.1),
                          ("request_timeout_s", 0.1), ("instances_per_request", 1)):
        value = cfg[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise ConfigError(f"config.{name} is {value!r}; it must be a number >= {minimum}")
    sample = cfg["record_sample"]
    if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 < sample <= 1:
        raise ConfigError(f"config.record_sample is {sample!r}; it must be a number in (0, 1]")
    cfg["record_sample"] = float(sample)
    cfg["shape"] = dict(shape)
    cfg["instances_per_request"] = int(cfg["instances_per_request"])
    if cfg.get("cloud_logging") is not None:
        cfg["cloud_logging"] = parse_cloud_logging(cfg["cloud_logging"])
    return cfg


def parse_cloud_logging(raw: Any) -> dict[str, Any]:
    """``config.cloud_logging``: ``{"project", "log_name"?, "interval_s"?}``, checked."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config.cloud_logging must be an object with project, log_name, "
                          "interval_s")
    out = {"log_name": "locust", "interval_s": 5.0, **raw}
    project, log_name, interval = out.get("project"), out["log_name"], out["interval_s"]
    if not isinstance(project, str) or not re.fullmatch(_PROJECT, project):
        raise ConfigError(f"config.cloud_logging.project is {project!r}; it must be a Google "
                          "Cloud project id")
    if not isinstance(log_name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", log_name):
        raise ConfigError(f"config.cloud_logging.log_name is {log_name!r}; use letters, digits "
                          "and _ . - only")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or \
            interval < MIN_LOG_INTERVAL_S:
        raise ConfigError(f"config.cloud_logging.interval_s is {interval!r}; it must be a "
                          f"number >= {MIN_LOG_INTERVAL_S:g}")
    return {"project": project, "log_name": log_name, "interval_s": float(interval)}


def load_config(uri: str) -> dict[str, Any]:
    try:
        raw = json.loads(read_uri(uri))
    except FileNotFoundError:
        raise ConfigError(f"test config {uri} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"test config {uri} is not valid JSON: {exc}") from None
    return parse_config(raw)


# ---------------------------------------------------------------- requests


def instances_for(payload: Sequence[Mapping[str, Any]], signature: str) -> list[Any]:
    """All instances of the payload items for ``signature``, in file order."""
    if not isinstance(payload, Sequence) or isinstance(payload, str | bytes):
        raise ConfigError("the payload must be a JSON list of {signature, instances} objects")
    out: list[Any] = []
    for item in payload:
        if not isinstance(item, Mapping) or not isinstance(item.get("instances"), list):
            raise ConfigError("every payload item must be an object with an 'instances' list")
        if item.get("signature") == signature:
            out.extend(item["instances"])
    if not out:
        found = sorted({str(i.get("signature")) for i in payload if isinstance(i, Mapping)})
        raise ConfigError(f"the payload has no instances for signature {signature!r} "
                          f"(it has: {', '.join(found) or 'nothing'}); rebuild it for this "
                          "signature")
    return out


def chunk_cyclic(instances: Sequence[Any], size: int) -> list[list[Any]]:
    """Requests of exactly ``size`` instances covering every instance once, wrapping around
    to fill the last one (so every request carries the same batch size)."""
    n = len(instances)
    count = -(-n // size)
    return [[instances[(i * size + j) % n] for j in range(size)] for i in range(count)]


def request_body(protocol: str, signature: str, instances: list[Any], predict_url: str) -> dict:
    """The JSON body for one predict call.

    AI Platform Prediction v1 and TF Serving REST take ``signature_name``; Vertex AI's
    ``:predict`` accepts only ``instances`` (the deployed model's default signature), while
    its ``:rawPredict`` passes a TF-Serving body through to the container.
    """
    if protocol == "vertex" and not predict_url.endswith(":rawPredict"):
        return {"instances": instances}
    return {"signature_name": signature, "instances": instances}


def request_bodies(cfg: Mapping[str, Any], payload: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """Encoded bodies the users cycle through (encoded once, not per request)."""
    instances = instances_for(payload, cfg["signature"])
    return [
        json.dumps(
            request_body(cfg["protocol"], cfg["signature"], chunk, cfg["predict_url"]),
            separators=(",", ":"),
        ).encode("utf-8")
        for chunk in chunk_cyclic(instances, cfg["instances_per_request"])
    ]


_ERROR_KEY = re.compile(rb'"error"\s*:')


def response_error(status_code: int, body: bytes | None) -> str | None:
    """Why a response is a failure, or ``None`` for a success.

    Non-2xx is a failure; so is a 2xx whose JSON carries ``error`` (AI Platform answers
    prediction errors with 200). The body is parsed only when it may hold an error.
    """
    body = body or b""
    if not 200 <= status_code < 300:
        return f"HTTP {status_code}: {_snippet(body)}" if body else f"HTTP {status_code}"
    if _ERROR_KEY.search(body) is None:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if isinstance(doc, dict) and "error" in doc:
        error = doc["error"]
        text = error if isinstance(error, str) else json.dumps(error, separators=(",", ":"))
        return f"error in {status_code} response: {_snippet(text.encode())}"
    return None


def _snippet(body: bytes) -> str:
    text = body.decode("utf-8", "replace").replace("\n", " ").strip()
    return text[:MAX_ERROR_CHARS]


def refresh_delay_s(expiry: dt.datetime | None, now: dt.datetime) -> float:
    """Seconds to wait before refreshing a token that expires at ``expiry``: five minutes
    early, at least 30 s apart, at most 50 minutes."""
    if expiry is None:
        return 30.0
    return min(max((expiry - now).total_seconds() - 300.0, 30.0), 3000.0)


# ---------------------------------------------------------------- raw records


def worker_id() -> str:
    """Unique per process and pod: ``<hostname>-<pid>``, file-name safe."""
    host = re.sub(r"[^A-Za-z0-9_.]+", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


class CsvChunks:
    """Rows held in memory and written as one CSV file per flush:
    ``<output_uri>/<folder>/worker-<id>-<seq:06d>.csv``, each whole. A failed upload keeps
    its rows for the next flush. Subclasses name the folder and the header."""

    folder = ""
    header: tuple[str, ...] = ()

    def __init__(self, output_uri: str, worker: str):
        self.output_uri = output_uri
        self.worker = worker
        self.rows: list[tuple] = []
        self.seq = 0
        self.written = 0

    def flush(self) -> str | None:
        """Write the buffered rows to a new file; return its URI (None when nothing to do)."""
        rows, self.rows = self.rows, []  # swap first: requests keep appending meanwhile
        if not rows:
            return None
        uri = join(self.output_uri, self.folder, f"worker-{self.worker}-{self.seq:06d}.csv")
        try:
            write_uri(uri, self.encode(rows))
        except BaseException:
            self.rows[:0] = rows
            raise
        self.seq += 1
        self.written += len(rows)
        return uri

    def encode(self, rows: Sequence[Sequence[Any]]) -> bytes:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows(rows)
        return buf.getvalue().encode("utf-8")


class RecordBuffer(CsvChunks):
    """Client raw records, one CSV file per flush in ``<output_uri>/requests/``.

    :meth:`add` runs once per request in the load generator's hot path, so it only keeps
    the values; a flush formats them, one ``%`` per row for the common row (no error, plain
    text fields), the csv module for the rest (quoting)."""

    folder = "requests"
    header = RECORD_HEADER
    _PLAIN_ROW = "%.6f,%.3f,%d,%d,%s,%s,%d,\n"  # ts, latency_ms, ok ... bytes, no error

    def add(self, ts: float, latency_ms: float, ok: bool, status_code: int, signature: str,
            nbytes: int, error: str | None) -> None:
        self.rows.append((ts, latency_ms, ok, status_code, signature, nbytes, error))

    def encode(self, rows: Sequence[Sequence[Any]]) -> bytes:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header)
        worker, plain_row, write = self.worker, self._PLAIN_ROW, buf.write
        plain = {worker: _plain(worker)}  # text field -> needs no CSV quoting
        for ts, latency_ms, ok, status_code, signature, nbytes, error in rows:
            if signature not in plain:
                plain[signature] = _plain(signature)
            if not error and plain[worker] and plain[signature]:
                write(plain_row % (ts, latency_ms, ok, status_code, signature, worker, nbytes))
            else:
                writer.writerow((f"{ts:.6f}", f"{latency_ms:.3f}", 1 if ok else 0, status_code,
                                 signature, worker, nbytes, (error or "")[:MAX_ERROR_CHARS]))
        return buf.getvalue().encode("utf-8")


def _plain(text: str) -> bool:
    """Whether the csv module would write ``text`` as is (no quoting needed)."""
    return not any(c in text for c in ',"\r\n') and text.strip(" ") == text


# ---------------------------------------------------------------- Locust's own files


def locust_outputs(csv_prefix: str | None, html_path: str | None) -> list[Path]:
    """Locust's CSVs (``<prefix>_stats.csv``...) and HTML report that exist locally."""
    candidates = [Path(csv_prefix + suffix) for suffix in LOCUST_CSV_SUFFIXES] if csv_prefix \
        else []
    if html_path:
        candidates.append(Path(html_path))
    return [path for path in candidates if path.is_file()]


def publish_outputs(publish_uri: str, csv_prefix: str | None,
                    html_path: str | None) -> list[str]:
    """Upload Locust's CSVs and HTML report to the folder ``publish_uri`` (one whole object
    each, named as locally); returns the URIs written. Call it once Locust has closed them."""
    written = []
    for path in locust_outputs(csv_prefix, html_path):
        kind = "text/html" if path.suffix == ".html" else "text/csv"
        written.append(write_uri(join(publish_uri, path.name), path.read_bytes(), kind))
    return written


# ---------------------------------------------------------------- Cloud Logging


def signature_of(request_name: str) -> str | None:
    """The signature in a Locust request name ``predict:<signature>``; None for others."""
    if not request_name.startswith(REQUEST_NAME_PREFIX):
        return None
    return request_name[len(REQUEST_NAME_PREFIX):] or None


def log_payloads(*, test_id: str, model: str, user_count: int,
                 stats: Sequence[tuple[str, float | None, int, int]]) -> list[dict[str, Any]]:
    """One jsonPayload per signature, the contract of the log-based metrics
    (``caio_operators.metrics.log_metrics``).

    ``stats``: ``(signature, p95 latency ms over Locust's window or None, requests since
    start, failures since start)``. ``latency`` is left out when there is no value yet, so
    the latency metric (which only reads entries that have it) records no fake zero.
    """
    payloads = []
    for signature, p95_ms, requests, failures in stats:
        payload: dict[str, Any] = {"test_id": test_id, "signature": signature, "model": model}
        if p95_ms is not None:
            payload["latency"] = round(float(p95_ms), 3)
        payload.update(user_count=int(user_count), num_requests=int(requests),
                       num_failures=int(failures))
        payloads.append(payload)
    return payloads


def log_entries_request(project: str, log_name: str,
                        payloads: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A ``WriteLogEntriesRequest`` (as a dict) writing ``payloads`` in one batch to
    ``projects/<project>/logs/<log_name>`` on the ``global`` resource."""
    return {
        "log_name": f"projects/{project}/logs/{log_name}",
        "resource": {"type": "global", "labels": {"project_id": project}},
        "labels": {"app": "caio-bench"},
        "entries": [{"json_payload": dict(payload), "severity": "INFO"}
                    for payload in payloads],
    }


def make_logging_client() -> Any:
    """google-cloud-logging's ``LoggingServiceV2Client`` with Application Default
    Credentials (the pod's Workload Identity, the Airflow worker's service account)."""
    import google.auth
    from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2Client

    credentials, _ = google.auth.default(scopes=list(LOGGING_SCOPES))
    return LoggingServiceV2Client(credentials=credentials)

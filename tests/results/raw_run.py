"""A small hand-written run as raw CSV chunks in a file:// bucket (numbers are literal)."""

from __future__ import annotations

from caio_operators import storage
from caio_operators.layout import RunLayout

CLIENT_HEADER = "ts,latency_ms,ok,status_code,signature,worker,bytes,error"
SERVER_HEADER = "ts,latency_ms,ok,status_code,signature,replica,instances,error"
SAMPLES_HEADER = "ts,replica,pid,cpu_percent,rss_mb"
HISTORY_HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,"
    "99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,"
    "Total Average Response Time,Total Min Response Time,Total Max Response Time,"
    "Total Average Content Size"
)

CLIENT_W1 = """1000.1,10,1,200,serving_default,1,50,
1000.6,30,1,200,serving_default,1,50,
1001.2,20,1,200,serving_default,1,50,
1001.7,500,0,503,serving_default,1,0,HTTP 503: overloaded
"""
CLIENT_W2 = """1000.3,40,1,200,serving_default,2,50,
1002.4,50,1,200,serving_default,2,50,
1003.0,60,1,200,serving_default,2,50,
1003.9,2.5,0,,serving_default,2,0,"ConnectionError: refused, retry"
"""
SERVER_R0 = """1000.11,8,1,200,serving_default,0,1,
1000.61,12,1,200,serving_default,0,1,
"""
SERVER_R1 = """1000.31,30,1,200,serving_default,1,1,
1001.21,16,1,200,serving_default,1,1,
"""
SAMPLES = """1000.0,0,11,50,200
1000.5,0,11,70,210
1000.2,1,12,20,190
1001.0,0,11,90,220
"""
_NA = ",".join(["N/A"] * 11)
HISTORY = f"""1000,1,,Aggregated,0.000000,0.000000,{_NA},0,0,0,0,0,0,0
1001,2,POST,/v1/models/m:predict,3.000000,0.000000,20,30,30,30,40,40,40,40,40,40,40,3,0,30,26,10,40,50
1001,2,,Aggregated,3.000000,0.000000,20,30,30,30,40,40,40,40,40,40,40,3,0,30,26,10,40,50
1002,2,,Aggregated,2.500000,0.500000,20,30,30,30,40,500,500,500,500,500,500,5,1,30,120,10,500,40
1003,2,,Aggregated,2.000000,0.500000,30,40,50,50,60,500,500,500,500,500,500,8,2,35,89,2,500,37
"""

META = {
    "run_id": "run-1", "dag_id": "caio_load_test", "target": "local", "protocol": "tfserving",
    "model_name": "mobilenet", "model_version": "v1",
    "model_source": "keras.applications.MobileNetV2", "weights": "random",
    "signature": "serving_default", "load_shape": "constant", "users": 2, "workers": 2,
    "replicas": 2, "status": "success", "reason": "", "started_at": 1000.0,
    "ended_at": 1004.0, "provenance": {"caio_operators": "0.1.0", "locust": "2.47"},
    "params": {"users": 2, "duration_s": 4}, "harvested_at": "2024-05-01T12:00:00Z",
}


def write_csv(uri: str, header: str, body: str) -> None:
    storage.write_text(uri, header + "\n" + body)


def write_small_run(bucket: str, run_id: str = "run-1") -> RunLayout:
    """The hand-written run above under ``bucket``."""
    lay = RunLayout(bucket, run_id)
    write_csv(storage.join(lay.client_requests_dir, "worker-1-000000.csv"), CLIENT_HEADER,
              CLIENT_W1)
    write_csv(storage.join(lay.client_requests_dir, "worker-2-000000.csv"), CLIENT_HEADER,
              CLIENT_W2)
    write_csv(storage.join(lay.server_requests_dir, "replica-0-000000.csv"), SERVER_HEADER,
              SERVER_R0)
    write_csv(storage.join(lay.server_requests_dir, "replica-1-000000.csv"), SERVER_HEADER,
              SERVER_R1)
    write_csv(storage.join(lay.samples_dir, "samples-000000.csv"), SAMPLES_HEADER, SAMPLES)
    write_csv(lay.locust_csv_prefix + "_stats_history.csv", HISTORY_HEADER, HISTORY)
    return lay


def named_reads_runs(tables: dict) -> list[tuple[dict, str]]:
    """Five runs around the small run's tables for the warehouses' named reads: run-1 as
    written; run-2 a later version from the sweep DAG; run-3 failed; run-4 another model;
    run-5 never started (harvested in 2024, after every start in 1970)."""
    import pandas as pd

    def ts(seconds: float):
        return pd.Timestamp(seconds, unit="s", tz="UTC")

    def run(run_id: str, **columns) -> tuple[dict, str]:
        out = {name: frame.assign(run_id=run_id) for name, frame in tables.items()}
        out["runs"] = out["runs"].assign(**columns)
        return out, run_id

    return [run("run-1"),
            run("run-2", model_version="v2", started_at=ts(2000), dag_id="caio_version_sweep"),
            run("run-3", status="failed", started_at=ts(3000)),
            run("run-4", model_name="resnet", started_at=ts(4000)),
            run("run-5", started_at=pd.NaT)]


def a_verdict(run_id: str, verdict: str, cost_per_1k: float):
    """A ``verdicts`` row of the schema's types."""
    import pandas as pd

    from caio_operators.results import schema as sc

    row = dict.fromkeys(sc.columns("verdicts"))
    row.update(run_id=run_id, verdict=verdict, cost_per_1k=cost_per_1k,
               analysed_at=pd.Timestamp("2024-05-02", tz="UTC"))
    return sc.conform("verdicts", pd.DataFrame([row]))

"""Where a run's files live in the bucket. Every stage finds its inputs here.

```
<bucket>/models/<model_name>/<model_version>/          exported SavedModel
<bucket>/runs/<run_id>/load/config.json                 test config read by the locustfile
<bucket>/runs/<run_id>/load/payload.json                [{signature, instances}, ...]
<bucket>/runs/<run_id>/load/requests/*.csv              raw client records, a file per worker flush
<bucket>/runs/<run_id>/load/locust_stats_history.csv    Locust's CSV (+ _stats, _failures)
<bucket>/runs/<run_id>/load/locust_report.html          Locust's own HTML report
<bucket>/runs/<run_id>/server/requests/*.csv            raw server-side records (local target)
<bucket>/runs/<run_id>/server/samples/*.csv             CPU/memory per replica (local target)
<bucket>/runs/<run_id>/server/scaling/*.csv             replica count changes (local target)
<bucket>/runs/<run_id>/tables/{runs,timeseries,requests}.parquet
<bucket>/runs/<run_id>/report/report.html (+ summary.json)
<bucket>/sweeps/<sweep_id>/comparison.html (+ .json)     a sweep's comparison report
<bucket>/reports/history.html (+ .json)                 the history report
```
"""

from __future__ import annotations

from dataclasses import dataclass

from caio_operators.storage import join


def model_uri(bucket: str, model_name: str, model_version: str) -> str:
    return join(bucket, "models", model_name, model_version)


def comparison_uri(bucket: str, sweep: str) -> str:
    return join(bucket, "sweeps", sweep, "comparison.html")


def history_uri(bucket: str) -> str:
    return join(bucket, "reports", "history.html")


@dataclass(frozen=True)
class RunLayout:
    bucket: str
    run_id: str

    @property
    def run_dir(self) -> str:
        return join(self.bucket, "runs", self.run_id)

    # load
    @property
    def load_dir(self) -> str:
        return join(self.run_dir, "load")

    @property
    def config_uri(self) -> str:
        return join(self.load_dir, "config.json")

    @property
    def payload_uri(self) -> str:
        return join(self.load_dir, "payload.json")

    @property
    def client_requests_dir(self) -> str:
        return join(self.load_dir, "requests")

    @property
    def locust_csv_prefix(self) -> str:
        """Prefix for Locust's ``--csv`` (``_stats.csv``, ``_stats_history.csv`` follow)."""
        return join(self.load_dir, "locust")

    @property
    def locust_html(self) -> str:
        return join(self.load_dir, "locust_report.html")

    @property
    def load_result_uri(self) -> str:
        return join(self.load_dir, "result.json")

    # server (local target)
    @property
    def server_dir(self) -> str:
        return join(self.run_dir, "server")

    @property
    def server_requests_dir(self) -> str:
        return join(self.server_dir, "requests")

    @property
    def samples_dir(self) -> str:
        return join(self.server_dir, "samples")

    @property
    def scaling_dir(self) -> str:
        return join(self.server_dir, "scaling")

    # results
    @property
    def tables_dir(self) -> str:
        return join(self.run_dir, "tables")

    def table_uri(self, table: str) -> str:
        return join(self.tables_dir, f"{table}.parquet")

    @property
    def report_dir(self) -> str:
        return join(self.run_dir, "report")

    @property
    def report_html(self) -> str:
        return join(self.report_dir, "report.html")

    @property
    def summary_json(self) -> str:
        return join(self.report_dir, "summary.json")

"""Which report a tab serves (caio_operators.ui.locate) and what the plugin registers on which
Airflow (caio_operators.ui.plugin): pure functions, literal cases."""

from __future__ import annotations

from caio_operators.ui.locate import dag_history, known_report, run_report, sweep_comparison
from caio_operators.ui.plugin import MIN_AIRFLOW, components, supported

B = "gs://bench/caio"


def test_only_the_three_report_files_in_a_bucket_are_known():
    assert known_report(f"{B}/runs/r1/report/report.html")
    assert known_report("file:///data/bucket/sweeps/sweep-x/comparison.html")
    assert known_report(f"{B}/reports/history.html")
    for uri in ("file:///etc/passwd", f"{B}/runs/r1/report/summary.json",
                f"{B}/runs/../../other/runs/r1/report/report.html",
                "http://evil.example/report/report.html", None, 42,
                f"{B}/runs/r1/load/locust_report.html"):
        assert known_report(uri) is None, uri


def test_a_runs_report_is_what_analyse_returned_else_its_layout():
    spec = {"bucket": B, "run_id": "m-v1-x"}
    returned = {"report_uri": f"{B}/runs/other/report/report.html"}
    assert run_report({"analyse": returned, "validate": spec}) == returned["report_uri"]
    assert run_report({"validate": spec}) == f"{B}/runs/m-v1-x/report/report.html"
    assert run_report({"analyse": {"report_uri": "file:///etc/passwd"}}) is None
    assert run_report({"validate": {"bucket": B}}) is None and run_report({}) is None


def test_a_sweeps_comparison_and_a_dags_history():
    plan = [{"bucket": B, "run_id": "v1", "airflow_run_id": "manual__2026-01-01"}]
    assert sweep_comparison({"plan": plan}) == f"{B}/sweeps/sweep-manual-2026-01-01/comparison.html"
    assert sweep_comparison({"compare": {"report_uri": f"{B}/sweeps/s/comparison.html"},
                             "plan": plan}) == f"{B}/sweeps/s/comparison.html"
    # newest run first; a run with nothing usable is passed over
    assert dag_history([{}, {"validate": {"bucket": "file:///b", "run_id": "r"}},
                        {"history": {"report_uri": f"{B}/reports/history.html"}}]) \
        == "file:///b/reports/history.html"
    assert dag_history([{"compare": {"history_uri": f"{B}/reports/history.html"}}]) \
        == f"{B}/reports/history.html"
    assert dag_history([{}]) is None


def test_the_plugin_registers_the_tabs_only_on_airflow_that_can_authenticate_them():
    assert supported(MIN_AIRFLOW) and supported("3.3.2") and supported("3.2.0.dev0")
    assert not supported("3.1.0") and not supported("3.0.6")
    assert components("3.1.0") == ([], [])
    [app], views = components("3.3.2")
    assert app["url_prefix"] == "/caio-bench"
    assert {v["name"]: (v["destination"], v["href"]) for v in views} == {
        "Benchmark report": ("dag_run", "caio-bench/dags/{DAG_ID}/runs/{RUN_ID}/report"),
        "Sweep comparison": ("dag_run", "caio-bench/dags/{DAG_ID}/runs/{RUN_ID}/comparison"),
        "Benchmark history": ("dag", "caio-bench/dags/{DAG_ID}/history"),
    }

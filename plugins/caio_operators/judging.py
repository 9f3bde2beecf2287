"""The judging stages of a run and of a sweep, as plain functions: check a named baseline,
judge the run against its baseline and price it, write its report, rank a sweep's variants,
refresh the history report. They read the warehouse only; ``pipeline`` (which runs the
benchmark) re-exports them for the operators.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from caio_operators.spec import RunSpec
from caio_operators.stage_base import RunFailed, TaskLog, warehouse_options

_log = logging.getLogger(__name__)


def check_baseline_run(spec: RunSpec) -> None:
    """A named ``baseline_run_id`` must be a run of the warehouse (the validate task's
    check; reads only, creates nothing). Raises SpecError naming it."""
    if not spec.baseline_run_id:
        return
    from caio_operators.results.warehouse import WarehouseError, open_warehouse
    from caio_operators.spec import SpecError

    try:
        found = open_warehouse(spec.warehouse, **warehouse_options(spec)).run_row(
            spec.baseline_run_id)
    except WarehouseError as exc:
        raise SpecError([f"baseline_run_id={spec.baseline_run_id!r}: cannot be looked up in "
                         f"the warehouse {spec.warehouse}: {exc}"]) from exc
    if found.empty:
        raise SpecError([f"baseline_run_id={spec.baseline_run_id!r}: no such run in the "
                         f"warehouse {spec.warehouse} (accepted: a run_id of its runs table, "
                         "e.g. from `python -m caio_operators.cli summary`; or empty)"])


def analyse(spec: RunSpec, log: TaskLog = _log) -> dict[str, Any]:
    """Judge the run against its baseline (unless it failed), then write its report with
    the verdict; a regression fails the task only after the report is written."""
    from caio_operators.analysis.report import analyse_run
    from caio_operators.analysis.verdicts import run_row
    from caio_operators.results.warehouse import open_warehouse

    row = run_row(open_warehouse(spec.warehouse, **warehouse_options(spec)), spec.run_id)
    judged = None
    if row is not None and row.get("status") != "failed":
        judged = judge(spec, log=log, enforce=False)
    # logs the summary table
    out = analyse_run(spec.warehouse, spec.run_id, spec.layout, verdict=judged,
                      **warehouse_options(spec))
    log.info("report: %s", out["report_uri"])
    status = out["summary"].get("status")
    if status == "failed":
        raise RunFailed(f"run {spec.run_id} failed: {out['summary'].get('reason')} "
                        f"(report with what was collected: {out['report_uri']})")
    enforce_verdict(spec, judged, log)
    return {"report_uri": out["report_uri"], "status": status, "verdict": judged}


class RegressionFound(RunFailed):
    """The run regressed against its baseline and ``fail_on_regression`` is set."""


def judge_options(spec: RunSpec) -> dict[str, Any]:
    """``verdicts.judge_run`` options from the RunSpec (how to compare and price)."""
    return {"percentile": spec.regression_percentile,
            "threshold": spec.regression_threshold_pct / 100.0,
            "price_table": spec.price_table, "machine_type": spec.machine_type,
            "accelerator_type": spec.accelerator_type,
            "accelerator_count": spec.accelerator_count,
            "local_machine_type": spec.local_machine_type,
            "instances_per_request": spec.instances_per_request}


def judge(spec: RunSpec, log: TaskLog = _log, baseline_run_id: str | None = None,
          enforce: bool = True) -> dict[str, Any]:
    """Compare the run with its baseline (``baseline_run_id``, else the spec's named one,
    else the rule), price it, store the verdict in the warehouse; with ``enforce`` a
    regression then fails (``fail_on_regression``) or warns (:func:`enforce_verdict`)."""
    from caio_operators.analysis.verdicts import judge_run
    from caio_operators.results.warehouse import open_warehouse

    warehouse = open_warehouse(spec.warehouse, **warehouse_options(spec))
    out = judge_run(warehouse, spec.run_id, baseline_version=spec.baseline_version,
                    baseline_run_id=baseline_run_id or spec.baseline_run_id or None,
                    **judge_options(spec))
    log.info("cost: %s", cost_text(out))
    if enforce:
        enforce_verdict(spec, out, log)
    return out


def cost_text(judged: Mapping[str, Any]) -> str:
    """A verdict's cost in words: per hour and per 1,000 predictions, or why unpriced."""
    if judged.get("cost_per_hour") is None:
        return f"not priced ({judged.get('cost_note')})"
    per_1k = "-" if judged.get("cost_per_1k") is None else f"{judged['cost_per_1k']:.4g}"
    return (f"{judged['cost_per_hour']:.4g}/h, {per_1k} per 1,000 predictions "
            f"({judged.get('cost_note')})")


def enforce_verdict(spec: RunSpec, judged: Mapping[str, Any] | None,
                    log: TaskLog = _log) -> None:
    """A regression fails the run with ``fail_on_regression``, else warns."""
    from caio_operators.analysis.compare import REGRESSION

    if not judged or judged["verdict"] != REGRESSION:
        return
    if spec.fail_on_regression:
        raise RegressionFound(f"run {spec.run_id} regressed against "
                              f"{judged['baseline_run_id']}: {judged['reason']}")
    log.warning("REGRESSION against %s: %s (fail_on_regression is off: warning only)",
                judged["baseline_run_id"], judged["reason"])


def compare_sweep(specs: list[Mapping[str, Any]], log: TaskLog = _log
                  ) -> dict[str, Any]:
    """A sweep's end: judge and rank its variants, write the comparison report and
    refresh the history report of every run in the warehouse."""
    from caio_operators.analysis.reports import compare_sweep as compare
    from caio_operators.analysis.reports import history_report
    from caio_operators.results.warehouse import open_warehouse
    from caio_operators.sweep import sweep_id

    if not specs:
        raise RunFailed("nothing to compare: the plan task produced no variants")
    first = RunSpec.from_dict(specs[0])
    warehouse = open_warehouse(first.warehouse, **warehouse_options(first))
    options = judge_options(first)
    for name in ("machine_type", "accelerator_type", "accelerator_count",
                 "instances_per_request"):
        options.pop(name)  # per variant
    out = compare(warehouse, specs, first.bucket, sweep_id(first.airflow_run_id), options)
    history = history_report(warehouse, first.bucket, dag_id="*")
    log.info("comparison report: %s", out["report_uri"])
    log.info("history report: %s", history["report_uri"])
    for row in out["ranking"]:
        log.info("#%s %-12s %-40s %s req/s  p95 %s ms  cost/1k %s  %s", row["rank"],
                 row["variant"], row["run_id"], row["capacity_rps"], row["p95_ms"],
                 row["cost_per_1k"], row["verdict"])
    failed = [r["variant"] for r in out["ranking"] if r["status"] == "failed"]
    if failed:
        raise RunFailed(f"variants {failed} failed (the report shows what was collected: "
                        f"{out['report_uri']})")
    return {**out, "history_uri": history["report_uri"]}


def history(warehouse_uri: str, bucket: str, dag_id: str = "caio_load_test",
            log: TaskLog = _log, **options: Any) -> dict[str, Any]:
    """Refresh the history report of ``dag_id``'s runs in ``warehouse_uri``."""
    from caio_operators.analysis.reports import history_report
    from caio_operators.results.warehouse import open_warehouse

    out = history_report(open_warehouse(warehouse_uri, **options), bucket, dag_id=dag_id)
    log.info("history report of %d runs (%d regressions): %s", out["runs"],
             out["regressions"], out["report_uri"])
    return out

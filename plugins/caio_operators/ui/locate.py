"""Which report a tab shows: each tab's declaration, and the pure rules that find a report's
URI from what a DAG run's tasks returned (their XComs), never from anything in a URL.

- "Benchmark report" (a run of ``caio_load_test``): what ``analyse`` returned
  (``report_uri``); when analyse failed after writing the report of a failed run (it raises
  then, so it returned nothing), the report in the run's layout, from ``validate``'s RunSpec.
- "Sweep comparison" (a run of ``caio_version_sweep``): what ``compare`` returned; else the
  sweep's folder from ``plan``'s first RunSpec.
- "Benchmark history" (a DAG): the history report of the bucket the DAG's latest runs used
  (``history`` or ``compare`` returned it; else derived from their RunSpec's bucket).

A URI is served only if it is one of these reports' files in a ``file://`` or ``gs://``
bucket (:func:`known_report`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from caio_operators import storage
from caio_operators.layout import RunLayout, comparison_uri, history_uri
from caio_operators.sweep import sweep_id

#: The file names the app may serve; any other URI found in an XCom is refused.
REPORT_FILES = ("/report/report.html", "/comparison.html", "/reports/history.html")


@dataclass(frozen=True)
class Tab:
    """One tab: its label, where Airflow shows it, its route in the app, the tasks whose
    XComs locate its report (in order of preference)."""

    name: str
    destination: str  # Airflow's external view destinations: "dag" or "dag_run"
    route: str
    tasks: tuple[str, ...]
    dag_hint: str  # the DAG whose runs have this report, named in "not found" messages

    @property
    def per_run(self) -> bool:
        return self.destination == "dag_run"


REPORT = Tab("Benchmark report", "dag_run", "report", ("analyse", "validate"), "caio_load_test")
COMPARISON = Tab("Sweep comparison", "dag_run", "comparison", ("compare", "plan"),
                 "caio_version_sweep")
HISTORY = Tab("Benchmark history", "dag", "history", ("history", "compare", "validate", "plan"),
              "caio_load_test, caio_version_sweep or caio_reports")
TABS = (REPORT, COMPARISON, HISTORY)


def known_report(uri: Any) -> str | None:
    """``uri`` if it names one of the reports this app serves, else None."""
    if not isinstance(uri, str) or storage.scheme(uri) not in storage.SCHEMES:
        return None
    if "/../" in uri or "/./" in uri or not uri.endswith(REPORT_FILES):
        return None
    return uri


def _spec(value: Any) -> Mapping[str, Any] | None:
    """The RunSpec dict in ``validate``'s XCom or the first of ``plan``'s list of them."""
    if isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, Mapping) or not all(
            isinstance(value.get(k), str) and value[k] for k in ("bucket", "run_id")):
        return None
    return value


def _returned(value: Any, field: str) -> str | None:
    return known_report(value.get(field)) if isinstance(value, Mapping) else None


def run_report(xcoms: Mapping[str, Any]) -> str | None:
    """The benchmark report of a ``caio_load_test`` run from its tasks' XComs."""
    spec = _spec(xcoms.get("validate"))
    return (_returned(xcoms.get("analyse"), "report_uri")
            or (known_report(RunLayout(spec["bucket"], spec["run_id"]).report_html)
                if spec else None))


def sweep_comparison(xcoms: Mapping[str, Any]) -> str | None:
    """The comparison report of a ``caio_version_sweep`` run from its tasks' XComs."""
    spec = _spec(xcoms.get("plan"))
    return (_returned(xcoms.get("compare"), "report_uri")
            or (known_report(comparison_uri(spec["bucket"],
                                            sweep_id(str(spec.get("airflow_run_id")))))
                if spec else None))


def dag_history(runs: Sequence[Mapping[str, Any]]) -> str | None:
    """The history report for a DAG from its latest runs' XComs (newest first)."""
    for xcoms in runs:
        returned = (_returned(xcoms.get("history"), "report_uri")
                    or _returned(xcoms.get("compare"), "history_uri"))
        if returned:
            return returned
        spec = _spec(xcoms.get("validate")) or _spec(xcoms.get("plan"))
        if spec:
            return known_report(history_uri(spec["bucket"]))
    return None


LOCATE = {REPORT.route: run_report, COMPARISON.route: sweep_comparison}

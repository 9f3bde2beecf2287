"""The FastAPI app behind the Airflow UI tabs (mounted by :mod:`caio_operators.ui.plugin`).

``GET /dags/{dag_id}/runs/{run_id}/report``       a ``caio_load_test`` run's report
``GET /dags/{dag_id}/runs/{run_id}/comparison``   a ``caio_version_sweep`` run's comparison
``GET /dags/{dag_id}/history``                    the history report for a DAG

Airflow does not authenticate a plugin's app: every route depends on the core API's own
``requires_access_dag`` (the JWT of the ``Authorization`` header or the UI's session cookie,
checked by the configured auth manager, then read access to that DAG's runs or the DAG).
The URL carries only ids: the report is found from the run's XComs in Airflow's database
(:mod:`caio_operators.ui.locate`) and read from the bucket through :mod:`caio_operators.storage`.
Runs in the API server only: it imports Airflow's API modules.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.models.dagrun import DagRun
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from caio_operators import storage
from caio_operators.ui import locate

#: How many of a DAG's latest runs the history tab looks through for its bucket.
HISTORY_RUNS = 20
#: The reports are self-contained (inline CSS and scripts, data: images): nothing else loads.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                               "script-src 'unsafe-inline'; font-src data:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-store",
}


def run_xcoms(dag_id: str, run_id: str, task_ids: Iterable[str]) -> dict[str, Any] | None:
    """The return values of ``task_ids`` in a DAG run (unmapped tasks); None: no such run."""
    with create_session() as session:
        found = session.scalar(select(DagRun.id).where(DagRun.dag_id == dag_id,
                                                       DagRun.run_id == run_id))
        if found is None:
            return None
        rows = session.scalars(XComModel.get_many(
            run_id=run_id, dag_ids=dag_id, task_ids=list(task_ids), key="return_value",
            map_indexes=-1))
        # scalars() yields XComModel rows (Airflow types get_many's select as tuples)
        return {row.task_id: XComModel.deserialize_value(row)  # type: ignore[attr-defined]
                for row in rows}


def latest_run_ids(dag_id: str, limit: int = HISTORY_RUNS) -> list[str]:
    with create_session() as session:
        return list(session.scalars(select(DagRun.run_id).where(DagRun.dag_id == dag_id)
                                    .order_by(DagRun.id.desc()).limit(limit)))


def page(status: int, title: str, text: str) -> HTMLResponse:
    """A short readable page: it shows inside the tab's frame."""
    body = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title></head><body style='font-family:sans-serif;margin:2em'>"
            f"<h2>{html.escape(title)}</h2><p>{html.escape(text, quote=False)}</p></body></html>")
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def serve(uri: str | None, tab: locate.Tab, where: str) -> HTMLResponse:
    if uri is None:
        return page(404, f"No {tab.name.lower()}",
                    f"{where} has no {tab.name.lower()} yet: the tab shows the report of "
                    f"{tab.dag_hint} once its tasks have written it.")
    try:
        return HTMLResponse(storage.read_bytes(uri), headers=HEADERS)
    except storage.StorageError as exc:
        return page(404, f"No {tab.name.lower()}", f"{where}: {exc}.")


def create_app() -> FastAPI:
    app = FastAPI(title="caio-bench reports", docs_url=None, redoc_url=None, openapi_url=None)
    tabs = {tab.route: tab for tab in locate.TABS if tab.per_run}

    @app.get("/dags/{dag_id}/runs/{run_id}/{route}", response_class=HTMLResponse,
             dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN))])
    def run_tab(dag_id: str, run_id: str, route: str) -> HTMLResponse:
        if route not in tabs:
            return page(404, "Not found", f"no such report: {route!r} (accepted: "
                                          f"{', '.join(sorted(tabs))})")
        tab = tabs[route]
        xcoms = run_xcoms(dag_id, run_id, tab.tasks)
        if xcoms is None:
            return page(404, "No such run", f"DAG {dag_id!r} has no run {run_id!r}.")
        return serve(locate.LOCATE[route](xcoms), tab, f"Run {run_id} of {dag_id}")

    @app.get("/dags/{dag_id}/history", response_class=HTMLResponse,
             dependencies=[Depends(requires_access_dag("GET"))])
    def history_tab(dag_id: str) -> HTMLResponse:
        tab = locate.HISTORY
        runs = [run_xcoms(dag_id, run_id, tab.tasks) or {} for run_id in latest_run_ids(dag_id)]
        return serve(locate.dag_history(runs), tab, f"DAG {dag_id}")

    return app

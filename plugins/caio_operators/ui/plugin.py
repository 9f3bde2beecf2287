"""The Airflow plugin: the benchmark tabs in the Airflow UI (registered by the package's
``airflow.plugins`` entry point, so an installed wheel brings it).

Tabs are Airflow external views whose ``href`` Airflow fills with the DAG and run ids; they
open this package's FastAPI app (:mod:`caio_operators.ui.app`), mounted under ``/caio-bench``
of the API server. The tab needs Airflow 3.1.1 or later (plugin apps and external views
came in 3.1.0, and 3.1.1's ``get_user`` also reads the UI's session cookie, the only
credential a tab's frame sends); on an older Airflow the plugin registers nothing and the
rest of the package works as before.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow import __version__ as airflow_version
from airflow.plugins_manager import AirflowPlugin
from packaging.version import Version

from caio_operators.ui.locate import TABS

log = logging.getLogger(__name__)

MIN_AIRFLOW = "3.1.1"
URL_PREFIX = "/caio-bench"


def tab_href(route: str, per_run: bool) -> str:
    """A tab's address relative to the UI's base (``<base href>``), as Airflow templates it."""
    run = "/runs/{RUN_ID}/" if per_run else "/"
    return f"{URL_PREFIX.lstrip('/')}/dags/{{DAG_ID}}{run}{route}"


class LazyApp:
    """The ASGI app, built on its first request: every Airflow component loads plugins, and
    only the API server should import Airflow's API modules."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            from caio_operators.ui.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


def supported(version: str) -> bool:
    return Version(version).release >= Version(MIN_AIRFLOW).release


def components(airflow_version: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The plugin's ``fastapi_apps`` and ``external_views`` on that Airflow version."""
    if not supported(airflow_version):
        log.info("caio-bench: the benchmark tabs need Airflow >= %s (this is %s): not "
                 "registered", MIN_AIRFLOW, airflow_version)
        return [], []
    apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "caio-bench reports"}]
    views = [{"name": tab.name, "destination": tab.destination,
              "url_route": f"caio-{tab.route}", "href": tab_href(tab.route, tab.per_run)}
             for tab in TABS]
    return apps, views


class CaioBenchPlugin(AirflowPlugin):
    """Benchmark report, sweep comparison and history tabs."""

    name = "caio_bench"
    fastapi_apps, external_views = components(airflow_version)

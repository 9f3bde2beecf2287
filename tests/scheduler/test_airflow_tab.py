"""The "Benchmark report" tab of the caio_bench plugin in the real deployment (what ``make
airflow`` serves): a person logs in, opens a finished caio_load_test run and reads its
report inside the tab; nobody reads it without logging in. A screenshot of the tab is kept
in ``.caio/test-output/airflow-tab.png`` (and ``docs/images/airflow-tab.png`` with
``CAIO_UPDATE_DOCS_IMAGES=1``)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest
from caio_testing import REPO

pytestmark = [pytest.mark.scheduler, pytest.mark.slow]
BROWSER_HEIGHT = 1100  # the browser fixture's window (conftest)

# the docs' copy only when asked (CAIO_UPDATE_DOCS_IMAGES=1): a test run leaves the tree clean
SCREENSHOTS = (REPO / ".caio" / "test-output" / "airflow-tab.png",
               *([REPO / "docs" / "images" / "airflow-tab.png"]
                 if os.environ.get("CAIO_UPDATE_DOCS_IMAGES") == "1" else []))
TAB = "Benchmark report"
FRAME = f"document.querySelector('iframe[title={json.dumps(TAB)}]')"


def report_url(api, run: dict) -> str:
    return (f"{api.deployment.url}/caio-bench/dags/caio_load_test/runs/"
            f"{quote(run['dag_run_id'], safe='')}/report")


def test_the_plugins_app_refuses_an_anonymous_request(api, triggered):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(report_url(api, triggered), timeout=30)
    assert refused.value.code == 401
    assert b"<html" not in refused.value.read()
    # the same URL with the admin's token: the report (so the refusal was the login's)
    assert "<html" in api.page(report_url(api, triggered).removeprefix(api.deployment.url))


def test_a_finished_run_shows_its_report_in_the_benchmark_report_tab(api, browser, triggered):
    assert triggered["state"] == "success", triggered
    run_id = api.get(f"/dags/caio_load_test/dagRuns/{quote(triggered['dag_run_id'])}/"
                     "taskInstances/validate/xcomEntries/return_value")["value"]["run_id"]
    user, password = api.deployment.login()
    browser.goto(f"{api.deployment.url}/dags/caio_load_test/runs/"
                 f"{quote(triggered['dag_run_id'], safe='')}")
    browser.type_into("input[name=username]", user)  # the login page comes first
    browser.type_into("input[name=password]", password)
    browser.click_text("button", "Sign in")
    browser.click_text("a", TAB)
    page = f"{FRAME}?.contentDocument"
    browser.wait_js(f"{page}?.readyState === 'complete' && "
                    f"{page}.body.innerText.includes({json.dumps(run_id)})",
                    what=f"the report of {run_id} inside the tab")
    # every figure of the report drawn: images loaded (charts, if canvas or svg, present)
    figures = browser.wait_js(
        f"(() => {{const d = {page}; const imgs = [...d.images];"
        " if (imgs.some(i => !i.complete || !i.naturalWidth)) return 0;"
        " return imgs.length + d.querySelectorAll('canvas, svg').length;})()",
        what="the report's figures drawn")
    assert figures > 0
    assert browser.js(f"{FRAME}.getBoundingClientRect().height") > 400
    for path in SCREENSHOTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        browser.screenshot(path)

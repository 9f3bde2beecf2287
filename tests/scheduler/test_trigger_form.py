"""The Trigger form of caio_load_test in a real browser (headless Chromium): log in, open the
form, find every param section with each param's help text, change two fields, trigger,
and find those values in the run's conf. A screenshot of the filled form is kept in
``.caio/test-output/trigger-form.png`` for people to look at."""

from __future__ import annotations

import json
import re

import pytest
from browser import Browser
from caio_testing import REPO
from scheduler_helpers import wait_until

from caio_operators.spec import param_schema

pytestmark = [pytest.mark.scheduler, pytest.mark.slow]
BROWSER_HEIGHT = 2400  # the browser fixture's window (conftest): the whole form in the screenshot

SCREENSHOT = REPO / ".caio" / "test-output" / "trigger-form.png"
CHANGED = {"model_source": "builtin:tiny", "duration_s": 5}
SUBMIT = "document.querySelector('[data-testid=trigger-dag-submit]')"
DIALOG = f"{SUBMIT}.closest('[role=dialog]')"


def _open_section(browser: Browser, section: str) -> None:
    button = (f"[...{DIALOG}.querySelectorAll('button[data-part=item-trigger]')]"
              f".find(b => b.innerText.trim() === {json.dumps(section)})")
    if browser.js(f"{button}.getAttribute('aria-expanded')") != "true":
        browser.click(button)
    browser.wait_js(f"{button}.getAttribute('aria-expanded') === 'true'", what=section)


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_the_trigger_form_shows_every_section_and_sends_the_changed_fields(api, browser,
                                                                           today_taken):
    # paused, with the form's "unpause" box cleared, the triggered run waits queued: the
    # test reads its conf and deletes it, and nothing runs
    api.call("PATCH", "/dags/caio_load_test", {"is_paused": True})
    user, password = api.deployment.login()
    browser.goto(f"{api.deployment.url}/dags/caio_load_test")
    browser.type_into("input[name=username]", user)  # the login page comes first
    browser.type_into("input[name=password]", password)
    browser.click_text("button", "Sign in")
    browser.click_text("button", "Trigger")
    browser.wait_js(f"!!{DIALOG}", what="the trigger dialog")

    schema = param_schema(api.deployment.caio_home, REPO / "test_images")
    sections = sorted({prop["section"] for prop in schema.values()})
    triggers = (f"[...{DIALOG}.querySelectorAll('button[data-part=item-trigger]')]"
                ".map(b => b.innerText.trim())")
    assert set(sections) <= set(browser.js(triggers)), browser.js(triggers)
    missing = []
    for section in sections:  # the form opens one section at a time
        _open_section(browser, section)
        shown = _words(browser.js(f"{DIALOG}.innerText"))
        missing += [name for name, prop in schema.items()
                    if prop["section"] == section and _words(prop["description"]) not in shown]
    assert not missing, f"params without their help text in the form: {missing}"

    for name, value in CHANGED.items():
        _open_section(browser, schema[name]["section"])
        browser.type_into(f"[role=dialog] input[name=element_{name}]", str(value))
    unpause = (f"[...{DIALOG}.querySelectorAll('label')]"
               ".find(l => l.innerText.trim().startsWith('Unpause'))")
    browser.wait_js(f"!!{unpause}", what="the form's unpause box (the DAG is paused)")
    browser.click(unpause)  # checked by default
    browser.wait_js(f"!{unpause}.querySelector('input').checked", what="unpause box cleared")
    browser.wait_js(f"!{SUBMIT}.disabled", what="the Trigger button enabled")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.screenshot(SCREENSHOT)
    before = {r["dag_run_id"] for r in api.get("/dags/caio_load_test/dagRuns")["dag_runs"]}
    browser.click(SUBMIT)

    def new_run():
        runs = api.get("/dags/caio_load_test/dagRuns")["dag_runs"]
        return [r for r in runs if r["dag_run_id"] not in before]

    [run] = wait_until(new_run, 60, lambda: "no run triggered from the form")
    try:
        assert {k: run["conf"].get(k) for k in CHANGED} == CHANGED, run["conf"]
        assert run["conf"]["users"] == schema["users"]["default"]  # the rest: defaults
        assert run["state"] == "queued"
        assert api.get("/dags/caio_load_test")["is_paused"]
    finally:
        api.call("DELETE", f"/dags/caio_load_test/dagRuns/{run['dag_run_id']}")

"""The benchmark tabs' app (caio_operators.ui) mounted the way the API server mounts plugin
apps (Airflow's own init_plugins, through the package's entry point), on a real Airflow
metadata database (a fresh SQLite one) holding real DAG runs and XComs, with JWTs of
Airflow's simple auth manager checked by the core API's own dependencies."""

from __future__ import annotations

import textwrap

import pytest
from airflow import __version__ as airflow_version

from caio_operators.layout import RunLayout
from caio_operators.ui.plugin import MIN_AIRFLOW, URL_PREFIX, supported

pytestmark = pytest.mark.skipif(
    not supported(airflow_version),
    reason=f"the tabs need Airflow >= {MIN_AIRFLOW}; the plugin registers nothing on "
           f"{airflow_version} (tests/test_ui_locate.py)")

DAGS = """
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG("caio_load_test", schedule=None):
    EmptyOperator(task_id="validate") >> EmptyOperator(task_id="analyse")
with DAG("caio_version_sweep", schedule=None):
    EmptyOperator(task_id="plan") >> EmptyOperator(task_id="compare")
"""
REPORT = "<html><body><h1>caio-bench run report</h1><p>marker-1234</p></body></html>"


try:
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
except ImportError:  # only where the module is skipped
    SimpleAuthManager = object


class OneDagAuthManager(SimpleAuthManager):
    """The simple auth manager, except that user ``outsider`` may read only the sweep DAG:
    an auth manager with per-DAG access (FAB, Keycloak, a company's own) in miniature."""

    def is_authorized_dag(self, *, method, user, access_entity=None, details=None):
        if user.get_name() == "outsider" and (details is None or
                                              details.id != "caio_version_sweep"):
            return False
        return super().is_authorized_dag(method=method, user=user,
                                         access_entity=access_entity, details=details)


@pytest.fixture(scope="module")
def airflow_db(tmp_path_factory):
    """A fresh Airflow database with the two DAGs parsed; the ORM points back afterwards."""
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils import db
    from airflow.utils.session import create_session

    root = tmp_path_factory.mktemp("airflow")
    (root / "dags").mkdir()
    (root / "dags" / "dags.py").write_text(textwrap.dedent(DAGS))
    url = f"sqlite:///{root / 'airflow.db'}"
    original = settings.SQL_ALCHEMY_CONN
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", url)
        env.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "a-64-byte-test-secret-" + "x" * 42)
        env.setenv("AIRFLOW__CORE__AUTH_MANAGER", f"{__name__}.OneDagAuthManager")
        settings.dispose_orm()
        settings.SQL_ALCHEMY_CONN = url
        settings.configure_orm()
        try:
            db.initdb()
            with create_session() as session:
                session.add(DagBundleModel(name="test"))
                session.flush()
                sync_bag_to_db(DagBag(str(root / "dags")), "test", None, session=session)
            yield
        finally:
            settings.dispose_orm()
            settings.SQL_ALCHEMY_CONN = original
            settings.configure_orm()


def add_run(dag_id: str, run_id: str, returned: dict) -> None:
    """A DAG run whose tasks returned ``returned`` ({task_id: value}), as XComs."""
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.xcom import XComModel
    from airflow.sdk import timezone
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    with create_session() as session:
        SerializedDagModel.get_dag(dag_id, session=session).create_dagrun(
            run_id=run_id, run_after=timezone.utcnow(), run_type=DagRunType.MANUAL,
            triggered_by=DagRunTriggeredByType.TEST, state=DagRunState.SUCCESS,
            session=session)
        session.flush()
        for task_id, value in returned.items():
            XComModel.set(key="return_value", value=value, dag_id=dag_id, task_id=task_id,
                          run_id=run_id, session=session)


@pytest.fixture(scope="module")
def client(airflow_db):
    """Airflow's own plugin mounting on a bare FastAPI app, and the configured auth manager."""
    from airflow.api_fastapi.app import create_auth_manager, init_plugins
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    assert type(create_auth_manager()) is OneDagAuthManager
    app = FastAPI()
    init_plugins(app)
    assert any(getattr(r, "path", None) == URL_PREFIX for r in app.routes), \
        "the caio_bench plugin's app is not mounted: is the package installed (entry point)?"
    with TestClient(app) as test_client:
        yield test_client


def token(username: str, role: str | None = "viewer") -> dict[str, str]:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    jwt = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role=role))
    return {"Authorization": f"Bearer {jwt}"}


@pytest.fixture(scope="module")
def runs(airflow_db, tmp_path_factory):
    """A finished run with its report, a failed one (analyse raised: only validate returned),
    one whose XCom names a file outside the reports, and a sweep with its comparison."""
    from caio_operators import storage

    bucket = "file://" + str(tmp_path_factory.mktemp("bucket"))
    ok, failed = RunLayout(bucket, "resnet-v1-ok"), RunLayout(bucket, "resnet-v1-failed")
    storage.write_text(ok.report_html, REPORT)
    storage.write_text(failed.report_html, REPORT.replace("marker-1234", "failed-run"))
    add_run("caio_load_test", "manual__ok", {
        "validate": {"bucket": bucket, "run_id": ok.run_id},
        "analyse": {"report_uri": ok.report_html, "status": "ok", "verdict": None}})
    add_run("caio_load_test", "manual__failed", {
        "validate": {"bucket": bucket, "run_id": failed.run_id}})
    add_run("caio_load_test", "manual__tampered", {
        "analyse": {"report_uri": "file:///etc/passwd"}})
    comparison = storage.write_text(
        storage.join(bucket, "sweeps", "sweep-manual-s1", "comparison.html"),
        REPORT.replace("marker-1234", "the-sweep"))
    add_run("caio_version_sweep", "manual__s1", {
        "plan": [{"bucket": bucket, "run_id": "v1", "airflow_run_id": "manual__s1"}],
        "compare": {"report_uri": comparison, "ranking": []}})
    return bucket


REPORT_URL = f"{URL_PREFIX}/dags/caio_load_test/runs/manual__ok/report"


def test_anonymous_request_is_refused(client, runs):
    response = client.get(REPORT_URL)
    assert response.status_code == 401
    assert "marker-1234" not in response.text
    assert client.get(REPORT_URL, cookies={"_token": "not-a-jwt"}).status_code in (401, 403)


def test_user_without_access_to_the_dag_is_refused(client, runs):
    outsider = token("outsider")
    response = client.get(REPORT_URL, headers=outsider)
    assert response.status_code == 403 and "marker-1234" not in response.text
    assert client.get(f"{URL_PREFIX}/dags/caio_load_test/history",
                      headers=outsider).status_code == 403
    # the check is per DAG: the same user reads the DAG it may read
    sweep = client.get(f"{URL_PREFIX}/dags/caio_version_sweep/runs/manual__s1/comparison",
                       headers=outsider)
    assert sweep.status_code == 200 and "the-sweep" in sweep.text
    # a user with no role reads no DAG at all
    assert client.get(REPORT_URL, headers=token("norole", role=None)).status_code == 403


def test_a_finished_run_serves_its_report(client, runs):
    response = client.get(REPORT_URL, headers=token("viewer"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == REPORT
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_session_cookie_of_the_ui_is_accepted(client, runs):
    """The tab's frame sends the UI's cookie, not a header."""
    jwt = token("viewer")["Authorization"].removeprefix("Bearer ")
    response = client.get(REPORT_URL, cookies={"_token": jwt})
    assert response.status_code == 200 and "marker-1234" in response.text


def test_a_failed_run_serves_the_report_in_its_layout(client, runs):
    response = client.get(f"{URL_PREFIX}/dags/caio_load_test/runs/manual__failed/report",
                          headers=token("viewer"))
    assert response.status_code == 200 and "failed-run" in response.text


def test_history_tab_finds_the_bucket_of_the_latest_runs(client, runs):
    from caio_operators import storage
    from caio_operators.layout import history_uri

    url = f"{URL_PREFIX}/dags/caio_load_test/history"
    missing = client.get(url, headers=token("viewer"))
    assert missing.status_code == 404 and "No benchmark history" in missing.text
    assert history_uri(runs) in missing.text  # names what it looked for
    storage.write_text(history_uri(runs), REPORT.replace("marker-1234", "the-history"))
    assert "the-history" in client.get(url, headers=token("viewer")).text


@pytest.mark.parametrize("path", [
    "/dags/caio_load_test/runs/..%2F..%2F..%2Fetc%2Fpasswd/report",
    "/dags/caio_load_test/runs/manual__ok/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/dags/caio_load_test/runs/manual__ok/report/../../../../../etc/passwd",
    "/dags/caio_load_test/runs/manual__ok/report.html",
    "/dags/caio_load_test/runs/manual__tampered/report",  # its XCom names /etc/passwd
])
def test_path_traversal_is_refused(client, runs, path):
    response = client.get(URL_PREFIX + path, headers=token("viewer"))
    assert response.status_code in (403, 404)
    assert "root:" not in response.text and "marker-1234" not in response.text


def test_unknown_run_is_a_clear_404(client, runs):
    response = client.get(f"{URL_PREFIX}/dags/caio_load_test/runs/no_such_run/report",
                          headers=token("viewer"))
    assert response.status_code == 404
    assert "DAG 'caio_load_test' has no run 'no_such_run'" in response.text
    sweep_tab = client.get(f"{URL_PREFIX}/dags/caio_load_test/runs/manual__ok/comparison",
                           headers=token("viewer"))
    assert sweep_tab.status_code == 404 and "caio_version_sweep" in sweep_tab.text

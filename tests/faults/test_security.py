"""Security rules checked on the code itself (the behaviour tests are beside them: bad
params in test_bad_params.py, the server's bind address in test_server_abuse.py, planted
credentials in test_concurrent_runs.py).

- no shell: no ``shell=True``, ``os.system`` or ``os.popen`` anywhere in the product;
- no value in SQL text: every SQL f-string interpolates only quoted, allow-listed
  identifiers (``_quote(...)`` / ``self._ref(...)``) or text built from the schema;
- table and dataset names are allow-listed; servers bind 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import ast
import re

import pytest
from caio_testing import REPO

from caio_operators.results.warehouse import TABLES, WarehouseError, check_table, open_warehouse

PRODUCT = [*(REPO / "plugins").rglob("*.py"), *(REPO / "locust").glob("*.py"),
           *(REPO / "dags").glob("*.py")]
# the product writes SQL keywords in capitals (messages are sentences)
SQL_START = re.compile(r"^\s*(SELECT|INSERT|DELETE|UPDATE|ALTER|CREATE|DROP|MERGE|WITH) ")
# what an SQL f-string may interpolate: quoted identifiers, and text made from the schema
SAFE_CALLS = {"quote", "_ref", "_ddl"}
SAFE_NAMES = {"cols", "type_", "order", "READ_ORDER",
              "n", "wanted"}  # bigquery's ALTER hint: schema column names and types


def _trees():
    for path in PRODUCT:
        yield path, ast.parse(path.read_text(), filename=str(path))


def test_the_product_never_uses_a_shell():
    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name in ("os.system", "os.popen", "subprocess.getoutput",
                        "subprocess.getstatusoutput"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                              and kw.value.value is False):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} shell=")
    assert not found, found


def _safe(value: ast.expr) -> bool:
    if isinstance(value, ast.Call):
        func = value.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name in SAFE_CALLS
    if isinstance(value, ast.Name):
        return value.id in SAFE_NAMES
    if isinstance(value, ast.Subscript):
        return _safe(value.value)
    return False


def test_sql_text_interpolates_only_allow_listed_identifiers():
    checked, found = 0, []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                head = "".join(v.value for v in node.values[:1] if isinstance(v, ast.Constant))
                if not SQL_START.match(head):
                    continue
                checked += 1
                found += [f"{path.relative_to(REPO)}:{node.lineno} {{{ast.unparse(v.value)}}}"
                          for v in node.values if isinstance(v, ast.FormattedValue)
                          and not _safe(v.value)]
            elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add)
                  and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)
                  and SQL_START.match(node.left.value)):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} SQL built with % or +")
    assert checked >= 5  # the warehouses' statements were seen
    assert not found, found


@pytest.mark.parametrize("name", ["runs; DROP TABLE runs", "main.runs", "Runs", "'runs'",
                                  "information_schema.tables", ""])
def test_table_names_are_allow_listed(name):
    with pytest.raises(WarehouseError, match="allowed tables"):
        check_table(name)
    assert set(TABLES) == {"runs", "timeseries", "requests", "verdicts", "comparisons"}


@pytest.mark.parametrize("uri", ["bigquery://my-project/runs;DROP", "bigquery://my-project/a-b",
                                 "bigquery://my-project/a.b", "bigquery://x/ds",
                                 "bigquery://my-project/ds?location=EU';--",
                                 "duckdb://relative.duckdb", "postgres://h/db"])
def test_warehouse_uris_and_dataset_names_are_checked(uri):
    with pytest.raises(WarehouseError):
        open_warehouse(uri)


def test_servers_and_locust_bind_loopback_by_default(tmp_path):
    from caio_operators.loadgen.local import local_launch_spec
    from caio_operators.targets.local import LocalTarget
    from caio_operators.targets.local_server import build_parser

    assert build_parser().parse_args(["--model-dir", "x"]).host == "127.0.0.1"
    import inspect

    assert inspect.signature(LocalTarget.deploy).parameters["host"].default == "127.0.0.1"
    config = {"predict_url": "http://127.0.0.1:1/v1/models/m:predict",
              "output_uri": f"file://{tmp_path}",
              "shape": {"kind": "constant", "users": 1, "spawn_rate": 1.0, "duration_s": 5.0}}
    spec = local_launch_spec(config=config,
                             config_uri=f"file://{tmp_path}/c.json", load_dir=tmp_path,
                             workers=1, locustfile=REPO / "locust" / "locustfile.py")
    argv = list(spec.master_argv)
    assert argv[argv.index("--master-bind-host") + 1] == "127.0.0.1"
    assert "--web-host" not in argv and "--headless" in argv  # no web UI listening

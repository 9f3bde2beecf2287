"""Fault 7: a full disk and a read-only bucket or warehouse.

Real filesystems: a tiny tmpfs filled to the last byte, and a tmpfs remounted read-only
(mounting needs root, as in this CI container; elsewhere these tests are skipped).
Harvest must fail with an error naming the path, and leave nothing half-written: no
partial or temporary Parquet file, no rows of the run in the warehouse.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest
from test_harvest_races import RUN, _write_run

from caio_operators import storage
from caio_operators.results.harvest import harvest_run
from caio_operators.results.warehouse import WarehouseError
from caio_operators.storage import StorageError

pytestmark = pytest.mark.faults

META = {"run_id": RUN, "dag_id": "faults", "target": "local", "protocol": "caip",
        "model_name": "m", "model_version": "v", "model_source": "builtin:tiny", "weights": "w",
        "signature": "serving_default", "load_shape": "constant", "users": 2, "workers": 2,
        "replicas": 1, "status": "success", "reason": "", "started_at": 999.0,
        "ended_at": 1011.0, "provenance": {}, "params": {}}


def _mount(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "16m"):
    _mount(path, size)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(root: Path) -> None:
    """Write until the filesystem is full (ENOSPC), down to the last byte."""
    for name, block in (("filler", 65536), ("filler2", 1)):
        handle = (root / name).open("wb", buffering=0)
        try:
            while True:
                handle.write(b"\0" * block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            with contextlib.suppress(OSError):
                handle.close()


def _visible(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def as_root():
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")


def test_full_bucket_fails_harvest_naming_the_path_and_writes_nothing(tmp_path, as_root):
    with tmpfs(tmp_path / "disk") as disk:
        layout = _write_run("file://" + str(disk / "bucket"))
        _fill(disk)
        before = _visible(disk)
        warehouse = f"duckdb://{tmp_path}/wh.duckdb"
        with pytest.raises(StorageError) as failed:
            harvest_run(layout, META, warehouse)
        message = str(failed.value)
        assert layout.table_uri("runs") in message or layout.tables_dir in message
        assert "No space left on device" in message and "free space" in message
        assert _visible(disk) == before  # no table, no temporary file
        assert not Path(f"{tmp_path}/wh.duckdb").exists()  # nothing reached the warehouse


def test_read_only_bucket_fails_harvest_naming_the_path(tmp_path, as_root):
    with tmpfs(tmp_path / "disk") as disk:
        layout = _write_run("file://" + str(disk / "bucket"))
        storage.local_path(layout.tables_dir).mkdir(parents=True)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(StorageError) as failed:
            harvest_run(layout, META, f"duckdb://{tmp_path}/wh.duckdb")
        assert layout.tables_dir in str(failed.value)
        assert "Read-only file system" in str(failed.value)
        assert not list(storage.local_path(layout.tables_dir).iterdir())


def test_full_warehouse_disk_keeps_the_stored_runs_and_names_the_path(tmp_path, as_root):
    import duckdb

    bucket = "file://" + str(tmp_path / "bucket")
    layout, other = _write_run(bucket), _write_run(bucket, "other-run")
    with tmpfs(tmp_path / "disk", size="8m") as disk:
        path = disk / "wh.duckdb"
        warehouse = f"duckdb://{path}"
        harvest_run(other, {**META, "run_id": "other-run"}, warehouse)
        _fill(disk)
        with pytest.raises((WarehouseError, StorageError)) as failed:
            harvest_run(layout, META, warehouse)
        assert str(path) in str(failed.value) and "nothing changed" in str(failed.value)
        assert "No space left on device" in str(failed.value)
        for filler in disk.glob("filler*"):
            filler.unlink()
        with duckdb.connect(str(path), read_only=True) as con:
            assert con.execute("SELECT run_id FROM runs").fetchall() == [("other-run",)]
            (mine,), = con.execute("SELECT count(*) FROM requests WHERE run_id = ?",
                                   [RUN]).fetchall()
        assert mine == 0  # the failed run left no rows; the other run is intact


def test_read_only_warehouse_names_the_path(tmp_path, as_root):
    layout = _write_run("file://" + str(tmp_path / "bucket"))
    with tmpfs(tmp_path / "disk") as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(WarehouseError) as failed:
            harvest_run(layout, META, f"duckdb://{disk}/wh.duckdb")
        assert f"{disk}/wh.duckdb" in str(failed.value)
        assert not list(disk.iterdir())

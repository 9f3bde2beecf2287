"""storage.py and the harvest on gs:// URIs, against a real local GCS emulator.

Everything goes through the production code path (fsspec -> gcsfs -> the JSON API over
HTTP); only the endpoint differs (``STORAGE_EMULATOR_HOST``, set by the ``gcs`` fixture).
A second, independent client (raw HTTP, or pyarrow's own GCS filesystem) checks what
another reader of the bucket would see.
"""

from __future__ import annotations

import io
import json
import threading
import urllib.parse
import urllib.request

import fsspec
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from raw_run import META, write_small_run

from caio_operators import storage
from caio_operators.results import readers
from caio_operators.results import schema as sc
from caio_operators.results.consolidate import build_tables
from caio_operators.results.harvest import harvest_run
from caio_operators.results.store import write_tables
from caio_operators.results.warehouse import open_warehouse


def object_path(uri: str) -> tuple[str, str]:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return bucket, name


def http_list(gcs, prefix_uri: str) -> dict[str, int]:
    """name -> size of the objects under a prefix, straight from the JSON API (no cache)."""
    bucket, prefix = object_path(prefix_uri)
    query = urllib.parse.urlencode({"prefix": prefix})
    with urllib.request.urlopen(f"{gcs.endpoint}/storage/v1/b/{bucket}/o?{query}",
                                timeout=10) as response:
        items = json.load(response).get("items", [])
    return {item["name"]: int(item["size"]) for item in items}


def http_read(gcs, uri: str) -> bytes | None:
    bucket, name = object_path(uri)
    url = (f"{gcs.endpoint}/download/storage/v1/b/{bucket}/o/"
           f"{urllib.parse.quote(name, safe='')}?alt=media")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def test_storage_round_trip_on_gs(gcs, gs_bucket, tmp_path):
    a = storage.join(gs_bucket, "run", "a.json")
    assert storage.write_text(a, '{"x": 1}') == a
    assert storage.read_text(a) == '{"x": 1}'
    assert storage.exists(a) and not storage.exists(storage.join(gs_bucket, "run", "b.json"))
    storage.write_bytes(storage.join(gs_bucket, "run", "deep", "c.csv"), b"h\n1\n")
    storage.write_bytes(storage.join(gs_bucket, "run", "deep", "d.csv"), b"h\n2\n")
    local = tmp_path / "report.html"
    local.write_bytes(b"<html>" + bytes(range(256)) * 100)
    e = storage.put_file(local, storage.join(gs_bucket, "run", "e.html"))
    assert storage.read_bytes(e) == local.read_bytes()

    run = storage.join(gs_bucket, "run")
    assert storage.list_files(run) == sorted(
        storage.join(run, p) for p in ("a.json", "deep/c.csv", "deep/d.csv", "e.html"))
    assert storage.list_files(run, ".csv") == [storage.join(run, "deep", "c.csv"),
                                               storage.join(run, "deep", "d.csv")]
    assert storage.list_files(storage.join(gs_bucket, "nothing")) == []
    assert set(http_list(gcs, run)) == {object_path(u)[1] for u in storage.list_files(run)}

    storage.remove_tree(run)
    assert storage.list_files(run) == [] and http_list(gcs, run) == {}
    storage.remove_tree(run)  # removing what is gone is fine
    with pytest.raises(storage.StorageError, match=f"{a} does not exist"):
        storage.read_bytes(a)


def http_write(gcs, uri: str, data: bytes) -> None:
    """Upload as another process would (a Locust worker pod, the model server)."""
    bucket, name = object_path(uri)
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    request = urllib.request.Request(f"{gcs.endpoint}/upload/storage/v1/b/{bucket}/o?{query}",
                                     data=data, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def test_listing_sees_files_that_other_writers_add(gcs, gs_bucket):
    requests_dir = storage.join(gs_bucket, "run", "load", "requests")
    assert storage.list_files(requests_dir) == []  # e.g. harvest polls before workers flush
    storage.write_bytes(storage.join(gs_bucket, "run", "config.json"), b"{}")
    assert storage.list_files(storage.join(gs_bucket, "run")) == [
        storage.join(gs_bucket, "run", "config.json")]
    chunk = storage.join(requests_dir, "worker-1-000000.csv")
    http_write(gcs, chunk, b"ts\n1\n")
    http_write(gcs, storage.join(gs_bucket, "run", "result.json"), b"{}")
    assert storage.exists(storage.join(gs_bucket, "run", "result.json"))
    assert storage.list_files(requests_dir) == [chunk]


def test_a_write_is_one_single_object_upload(gcs, gs_bucket):
    uri = storage.join(gs_bucket, "tables", "requests.parquet")
    payload = b"x" * (3 * 2**20)
    gcs.clear()
    storage.write_bytes(uri, payload)
    writes = [r for r in gcs.requests() if not r.startswith("GET")]
    assert len(writes) == 1, writes
    assert writes[0].startswith("POST /upload/storage/v1/b/caio-test/o?")
    assert "uploadType=multipart" in writes[0]  # one request carries metadata and all bytes
    # nothing beside it: no temporary or partial objects, and the object is whole
    assert http_list(gcs, storage.join(gs_bucket, "tables")) == {object_path(uri)[1]:
                                                                 len(payload)}


def test_readers_see_whole_objects_while_they_are_overwritten(gcs, gs_bucket):
    uri = storage.join(gs_bucket, "load", "result.json")
    size = 256 * 1024
    versions = [bytes([65 + i]) * size for i in range(4)]
    storage.write_bytes(uri, versions[0])
    seen: list[bytes | None] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(http_read(gcs, uri))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            storage.write_bytes(uri, versions[i % len(versions)])
    finally:
        stop.set()
        thread.join(timeout=30)
    assert len(seen) >= 10, "the reader hardly ran"
    assert all(data in versions for data in seen), "a reader saw a missing or partial object"


def test_write_tables_gives_parquet_any_gcs_client_reads(gcs, gs_bucket):
    layout = write_small_run(gs_bucket)
    raw = readers.read_run_inputs(layout)
    assert len(raw.client) == 8 and len(raw.server) == 4 and not raw.skipped
    tables = build_tables(dict(META), raw.client, raw.server, raw.samples, raw.locust_history)

    uris = write_tables(layout, tables)
    assert uris == {name: layout.table_uri(name) for name in tables}
    assert all(u.startswith("gs://") for u in uris.values())
    # pyarrow's own C++ GCS client, not fsspec: the objects are plain Parquet in the bucket
    fs = pafs.GcsFileSystem(anonymous=True, scheme="http",
                            endpoint_override=f"{gcs.host}:{gcs.port}")
    for name, uri in uris.items():
        table = pq.read_table(uri.removeprefix("gs://"), filesystem=fs)
        assert table.schema.equals(sc.arrow_schema(name), check_metadata=False)
        assert table.num_rows == len(tables[name])
        assert sc.conform(name, table.to_pandas()).equals(tables[name])
    # and through fsspec/gcsfs, the client the package itself uses
    runs = pq.read_table(uris["runs"], filesystem=fsspec.filesystem("gs"))
    assert runs.column("run_id").to_pylist() == ["run-1"]


def test_harvest_from_a_gs_bucket(gcs, gs_bucket, tmp_path):
    layout = write_small_run(gs_bucket)
    warehouse = "duckdb://" + str(tmp_path / "w.duckdb")
    first = harvest_run(layout, dict(META), warehouse)
    assert first["counts"]["runs"] == 1 and first["counts"]["requests"] == 12
    assert first["skipped_files"] == []
    assert first["figures"]["requests"] == 8 and first["figures"]["failures"] == 2
    second = harvest_run(layout, dict(META), warehouse)  # a retried task
    assert second["counts"] == first["counts"]
    assert storage.list_files(storage.join(layout.run_dir, "tables")) == sorted(
        layout.table_uri(name) for name in sc.TABLES)  # overwritten, not duplicated
    stored = open_warehouse(warehouse).read_run("run-1")
    parquet = {name: sc.conform(name, pq.read_table(io.BytesIO(storage.read_bytes(uri)))
                                .to_pandas())
               for name, uri in second["tables"].items()}
    pd.testing.assert_frame_equal(parquet["runs"], stored["runs"])
    for name in ("timeseries", "requests"):
        assert len(parquet[name]) == len(stored[name]) == first["counts"][name]

"""Reading raw CSV chunks from a file:// bucket."""

from __future__ import annotations

from raw_run import CLIENT_HEADER, write_csv

from caio_operators import storage
from caio_operators.layout import RunLayout
from caio_operators.results import readers


def test_reads_all_chunks_with_fixed_dtypes(small_run):
    raw = readers.read_run_inputs(small_run)
    assert raw.skipped == []
    client = raw.client.sort_values("ts", ignore_index=True)
    assert len(client) == 8
    assert list(client.columns) == list(readers.CLIENT_COLUMNS)
    assert str(client["ts"].dtype) == "float64" and str(client["ok"].dtype) == "boolean"
    assert str(client["status_code"].dtype) == "Int64"
    assert client["worker"].tolist() == ["1", "2", "1", "1", "1", "2", "2", "2"]
    assert client["ok"].sum() == 6
    # the quoted error text with a comma survives; empty errors read as empty text
    assert client["error"].iloc[-1] == "ConnectionError: refused, retry"
    assert client["error"].iloc[0] == ""
    assert client["status_code"].isna().sum() == 1
    assert len(raw.server) == 4 and sorted(raw.server["replica"]) == ["0", "0", "1", "1"]
    assert len(raw.samples) == 4 and raw.samples["cpu_percent"].max() == 90.0


def test_locust_history_renamed_with_na_as_null(small_run):
    hist = readers.read_locust_history(small_run.locust_csv_prefix)
    assert list(hist.columns) == [name for name, _ in readers.LOCUST_HISTORY_COLUMNS.values()]
    assert len(hist) == 5
    agg = hist[hist["name"] == "Aggregated"]
    assert agg["users"].tolist() == [1, 2, 2, 2]
    assert agg["p95_ms"].isna().tolist() == [True, False, False, False]
    assert agg["p95_ms"].tolist()[1:] == [40.0, 500.0, 500.0]


def test_nothing_written_reads_as_empty_frames(bucket):
    raw = readers.read_run_inputs(RunLayout(bucket, "never-ran"))
    for frame, cols in ((raw.client, readers.CLIENT_COLUMNS), (raw.server,
                        readers.SERVER_COLUMNS), (raw.samples, readers.SAMPLE_COLUMNS)):
        assert frame.empty and list(frame.columns) == list(cols)
    assert raw.locust_history.empty and "users" in raw.locust_history
    assert raw.skipped == []


def test_empty_corrupt_and_temp_files(bucket):
    lay = RunLayout(bucket, "messy")
    d = lay.client_requests_dir
    write_csv(storage.join(d, "worker-1-000000.csv"), CLIENT_HEADER,
              "1.0,5,1,200,serving_default,1,10,\n")
    storage.write_text(storage.join(d, "worker-1-000001.csv"), "")  # empty file: ignored
    storage.write_text(storage.join(d, "worker-1-000002.csv"), CLIENT_HEADER + "\n")  # header
    storage.write_text(storage.join(d, "worker-1-000003.csv"),
                       CLIENT_HEADER + "\n1.0,5,1\n2.0,oops,1,200,s,1,1,,extra\n")  # corrupt
    # an in-progress atomic write is never listed
    storage.write_text(storage.join(d, ".worker-1-000004.csv.tmp"), "garbage")
    skipped: list[str] = []
    client = readers.read_client_records(d, skipped)
    assert len(client) == 1 and client["latency_ms"].tolist() == [5.0]
    assert skipped == [storage.join(d, "worker-1-000003.csv")]


def test_extra_columns_ignored_missing_ones_null(bucket):
    d = RunLayout(bucket, "evolved").client_requests_dir
    storage.write_text(storage.join(d, "worker-1-000000.csv"),
                       "ts,latency_ms,ok,status_code,signature,worker,error,new_field\n"
                       "1.5,7,1,200,serving_default,w,,x\n")
    client = readers.read_client_records(d)
    assert client["latency_ms"].tolist() == [7.0]
    assert client["bytes"].isna().all()
    assert "new_field" not in client


def _client_rows(first: int, count: int) -> str:
    return "".join(f"{t}.0,{t},1,200,serving_default,w,10,\n" for t in range(first, first + count))


def test_many_files_read_in_order_with_a_bad_one_skipped_alone(bucket, monkeypatch):
    # small joined blocks and groups: the test crosses every boundary the reader has
    monkeypatch.setattr(readers, "_JOIN_BYTES", 200)
    monkeypatch.setattr(readers, "_GROUP_FILES", 7)
    d = RunLayout(bucket, "many").client_requests_dir
    for i in range(30):
        body = _client_rows(i * 3, 3)
        if i == 11:  # a row short of columns: its file is skipped, its neighbours are not
            body = "33.0,33,1\n" + body
        write_csv(storage.join(d, f"worker-w-{i:06d}.csv"), CLIENT_HEADER, body)
    skipped: list[str] = []
    table = readers.read_csv_table(storage.list_files(d, ".csv"), readers.CLIENT_COLUMNS,
                                   skipped)
    assert skipped == [storage.join(d, "worker-w-000011.csv")]
    assert table["latency_ms"].to_pylist() == [float(t) for t in range(90) if t // 3 != 11]


def test_a_truncated_file_never_swallows_the_next_ones_rows(bucket):
    d = RunLayout(bucket, "truncated").client_requests_dir
    write_csv(storage.join(d, "worker-w-000000.csv"), CLIENT_HEADER, _client_rows(0, 2))
    # cut inside a quoted error text: no closing quote, no final newline
    storage.write_text(storage.join(d, "worker-w-000001.csv"),
                       CLIENT_HEADER + "\n" + _client_rows(2, 1) + '3.0,3,0,500,s,w,1,"HTTP 5')
    write_csv(storage.join(d, "worker-w-000002.csv"), CLIENT_HEADER, _client_rows(4, 2))
    client = readers.read_client_records(d)
    # the cut file reads as it does alone (its last row with the text so far); the next
    # file's rows stay rows, not part of that open quote
    assert client["latency_ms"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert client["error"].tolist()[3:] == ["HTTP 5", "", ""]


def test_files_with_other_headers_are_parsed_by_their_own_header(bucket):
    d = RunLayout(bucket, "reordered").client_requests_dir
    write_csv(storage.join(d, "worker-w-000000.csv"), CLIENT_HEADER, _client_rows(0, 2))
    storage.write_text(storage.join(d, "worker-w-000001.csv"),
                       "latency_ms,ts,ok\n2,2.0,1\n")  # an older writer: fewer columns
    write_csv(storage.join(d, "worker-w-000002.csv"), CLIENT_HEADER, _client_rows(3, 1))
    client = readers.read_client_records(d)
    assert client["latency_ms"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert client["ts"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert client["bytes"].isna().tolist() == [False, False, True, False]

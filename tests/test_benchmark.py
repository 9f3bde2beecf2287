"""The benchmark fingerprint: which settings make two runs comparable (pure, literal)."""

from __future__ import annotations

from caio_operators import benchmark as bm

LOCAL = {"target": "local", "signature": "serving_preprocess", "instances_per_request": 1,
         "images_uri": "/imgs", "load_shape": "staircase", "duration_s": 80, "workers": 1,
         "load_runner": "local", "record_sample": 1.0, "replicas": 2, "server_threads": 0,
         "server_batch_max": 0, "server_batch_timeout_ms": 2.0, "users": 8,
         "spawn_rate": 4.0, "think_time_s": 0.0, "step_users": 2, "step_duration_s": 20,
         "rate": 10.0, "rate_profile": "constant", "model_source": "builtin:resnet_v2_101",
         "model_version": "v1", "endpoint_url": ""}
PROV = {"machine": "x86_64", "cpu_count": 8}


def test_fields_hold_what_shapes_the_measurement_and_not_the_model():
    fields = bm.benchmark_fields(LOCAL, PROV)
    assert fields["replicas"] == 2 and fields["users"] == 8 and fields["step_users"] == 2
    assert fields[bm.HOST] == "x86_64 x8 cpus"
    # knobs the shape ignores and the model under test are not part of it
    for name in ("rate", "rate_profile", "server_batch_timeout_ms", "model_source",
                 "model_version", "endpoint_url"):
        assert name not in fields
    # so changing them keeps the fingerprint; a knob the shape uses changes it
    same = bm.fingerprint(bm.benchmark_fields({**LOCAL, "rate": 99.0, "model_version": "v9"},
                                              PROV))
    assert same == bm.fingerprint(fields)
    assert bm.fingerprint(bm.benchmark_fields({**LOCAL, "users": 9}, PROV)) != same
    # 8 from --conf JSON and 8.0 from the form are one setting
    assert bm.fingerprint(bm.benchmark_fields({**LOCAL, "users": 8.0}, PROV)) == same


def test_open_rate_fields_follow_the_rate_profile():
    open_rate = {**LOCAL, "load_shape": "open_rate", "rate_profile": "spike",
                 "spike_rate": 50.0, "spike_start_s": 20, "spike_duration_s": 10,
                 "arrivals": "poisson", "max_in_flight": 256}
    fields = bm.benchmark_fields(open_rate, PROV)
    assert {"rate", "arrivals", "spike_rate", "spike_start_s"} <= set(fields)
    assert "users" not in fields and "step_rate" not in fields


def test_differences_name_fields_both_sides_have():
    local = bm.benchmark_fields(LOCAL, PROV)
    endpoint = bm.benchmark_fields({**LOCAL, "target": "endpoint", "protocol": "caip",
                                    "load_shape": "open_rate", "rate": 100.0}, None)
    diff = bm.differences(local, endpoint)
    # replicas, users, host... exist only on one side: they follow from target and shape
    assert diff == {"target": ("local", "endpoint"), "load_shape": ("staircase", "open_rate")}
    assert bm.describe(diff) == ("target 'local' vs 'endpoint', "
                                 "load_shape 'staircase' vs 'open_rate'")
    assert bm.differences(local, {**local, "replicas": 1}, ignore=["replicas"]) == {}


def test_pick_baseline_latest_same_benchmark_else_nearest_with_its_differences():
    base = bm.benchmark_fields(LOCAL, PROV)
    ident = {"model_source": "builtin:resnet_v2_101", "endpoint_url": ""}
    cands = [bm.Candidate("old-same", 100.0, base, ident),
             bm.Candidate("new-same", 200.0, base, ident),
             bm.Candidate("newest-other", 300.0, {**base, "replicas": 1}, ident)]
    assert bm.pick_baseline(base, cands, ident) == bm.Choice("new-same")
    # none the same: the nearest (fewest differences, then latest) and how it differs
    others = [bm.Candidate("two-off", 300.0, {**base, "replicas": 1, "users": 4}, ident),
              bm.Candidate("one-off", 100.0, {**base, "workers": 2}, ident),
              bm.Candidate("other-model", 400.0, base, {**ident, "model_source": "builtin:tiny"})]
    choice = bm.pick_baseline(base, others, ident)
    assert (choice.run_id, choice.nearest) == (None, "other-model")
    assert choice.diff == {"model_source": ("builtin:resnet_v2_101", "builtin:tiny")}
    # without identity (another version on purpose) the other model is the baseline
    assert bm.pick_baseline(base, others).run_id == "other-model"
    assert bm.pick_baseline(base, []) == bm.Choice(None)


def test_an_autoscaled_local_server_is_its_own_benchmark():
    from caio_operators.benchmark import benchmark_fields

    fixed = {"target": "local", "load_shape": "constant", "replicas": 1, "min_replicas": 1,
             "max_replicas": 2}
    autoscaled = {**fixed, "local_autoscaling": True, "max_replicas": 3,
                  "autoscaling_target": 60, "scale_up_window_s": 5, "scale_down_window_s": 10}
    assert "max_replicas" not in benchmark_fields(fixed)  # unchanged for fixed servers
    fields = benchmark_fields(autoscaled)
    assert fields["local_autoscaling"] is True and fields["max_replicas"] == 3
    assert fields["scale_up_window_s"] == 5


def test_a_longer_request_timeout_is_another_benchmark_and_the_default_changes_nothing():
    """``request_timeout_s`` decides which slow answers count as failures. Runs from before
    it was a param, and runs that keep its default (30 s), keep the fingerprint they had."""
    before = bm.fingerprint(bm.benchmark_fields(LOCAL, PROV))
    default = bm.fingerprint(bm.benchmark_fields({**LOCAL, "request_timeout_s": 30.0}, PROV))
    longer = bm.benchmark_fields({**LOCAL, "request_timeout_s": 120.0}, PROV)
    assert default == before
    assert longer["request_timeout_s"] == 120 and bm.fingerprint(longer) != before

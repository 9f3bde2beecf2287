"""Cost arithmetic with literal numbers, and the price table."""

from __future__ import annotations

import json

import pytest

from caio_operators.analysis import cost

TABLE = cost.parse_price_table(json.dumps({
    "taken": "2025-06-01", "currency": "USD",
    "machines": {"n1-standard-4": 0.25, "e2-standard-4": 0.15},
    "accelerators": {"NVIDIA_TESLA_T4": 0.5}}), "file:///prices.json")


def test_cloud_nodes_with_accelerators():
    per_hour, note = cost.hourly_cost(TABLE, target="vertex", replicas=2,
                                      machine_type="n1-standard-4",
                                      accelerator_type="NVIDIA_TESLA_T4", accelerator_count=2)
    assert per_hour == pytest.approx(2 * (0.25 + 2 * 0.5))  # 2.5 per hour
    assert "2 x n1-standard-4" in note and "2025-06-01" in note


def test_cost_per_thousand_at_max_sustainable_throughput():
    out = cost.cost_figures(2.5, max_sustainable_rps=125.0, throughput_rps=100.0)
    # 2.5 per hour / (125 req/s * 3600 s) * 1000 = 0.005556 per 1,000 predictions
    assert out["cost_per_1k"] == pytest.approx(2.5 / 450_000 * 1000)
    assert out["cost_per_1k"] == pytest.approx(0.0055556, rel=1e-4)
    assert (out["cost_basis"], out["cost_basis_rps"], out["cost_per_hour"]) == (
        "max_sustainable_rps", 125.0, 2.5)


def test_falls_back_to_measured_throughput_and_says_so():
    out = cost.cost_figures(0.25, max_sustainable_rps=None, throughput_rps=50.0,
                            instances_per_request=2)
    # 0.25 / (50 req/s * 2 predictions * 3600) * 1000 = 0.000694
    assert out["cost_per_1k"] == pytest.approx(0.25 / 360_000 * 1000)
    assert out["cost_basis"] == "throughput_rps" and "no peak search" in out["cost_note"]
    assert cost.cost_figures(0.25, max_sustainable_rps=None, throughput_rps=None)[
        "cost_per_1k"] is None


def test_local_is_free_unless_a_machine_is_named():
    assert cost.hourly_cost(TABLE, target="local", replicas=4)[0] == 0.0
    per_hour, note = cost.hourly_cost(TABLE, target="local", replicas=4,
                                      local_machine_type="e2-standard-4")
    assert per_hour == 0.15 and "one e2-standard-4" in note  # one machine, 4 processes
    assert cost.hourly_cost(TABLE, target="endpoint", replicas=1)[0] is None


def test_missing_entries_and_bad_tables_are_named():
    with pytest.raises(cost.PriceTableError, match=r"'a2-highgpu-1g'.*add its hourly price"):
        cost.hourly_cost(TABLE, target="caip", replicas=1, machine_type="a2-highgpu-1g")
    with pytest.raises(cost.PriceTableError, match=r"lacks.*taken"):
        cost.parse_price_table('{"machines": {}, "accelerators": {}}')
    with pytest.raises(cost.PriceTableError, match=r"bad entries.*n1"):
        cost.parse_price_table('{"taken": "x", "machines": {"n1": -1}, "accelerators": {}}')
    with pytest.raises(cost.PriceTableError, match="cannot read"):
        cost.load_price_table("file:///nonexistent/prices.json")


def test_bundled_price_table_has_its_date_and_the_defaults():
    table = cost.load_price_table()
    assert table.taken and table.currency == "USD"
    assert table.machine("n1-standard-4") > 0 and table.accelerator("NVIDIA_TESLA_T4") > 0

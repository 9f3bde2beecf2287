"""What a run's deployment costs: per hour, and per 1,000 predictions at its best rate.

The prices come from a JSON price table (``pricing/prices.json`` by default: hourly price
per machine type and per accelerator, and the date they were taken), editable and
replaceable by the ``price_table`` param. Pure arithmetic:

- cost per hour = replicas x (machine price + accelerators per node x accelerator price)
  for the cloud targets; the local target is one machine whatever its replica processes,
  priced as the ``local_machine_type`` entry, or 0 when none is named;
- cost per 1,000 predictions = cost per hour / (req/s x instances per request x 3600)
  x 1000, at the **max sustainable throughput** from a peak search, or at the measured
  throughput when no peak search ran (the basis is stated with the figure);
- ``target=endpoint`` (someone else's endpoint) is not priced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CLOUD_TARGETS = ("vertex", "caip")


class PriceTableError(ValueError):
    """The price table is missing, malformed or lacks an entry; the message says which."""


@dataclass(frozen=True)
class PriceTable:
    taken: str
    currency: str
    machines: Mapping[str, float]
    accelerators: Mapping[str, float]
    source: str = ""
    uri: str = ""

    def machine(self, name: str) -> float:
        if name not in self.machines:
            raise PriceTableError(
                f"machine type {name!r} is not in the price table {self.uri or ''} (it has "
                f"{', '.join(sorted(self.machines))}); add its hourly price there")
        return float(self.machines[name])

    def accelerator(self, name: str) -> float:
        if name not in self.accelerators:
            raise PriceTableError(
                f"accelerator {name!r} is not in the price table {self.uri or ''} (it has "
                f"{', '.join(sorted(self.accelerators))}); add its hourly price there")
        return float(self.accelerators[name])


def default_price_table_uri() -> str:
    from caio_operators.resources import find

    return "file://" + str(find("pricing", "prices.json"))


def parse_price_table(text: str, uri: str = "") -> PriceTable:
    """A price table from its JSON text; every price must be a number >= 0."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PriceTableError(f"price table {uri} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PriceTableError(f"price table {uri} must be a JSON object")
    missing = [k for k in ("taken", "machines", "accelerators") if k not in data]
    if missing:
        raise PriceTableError(f"price table {uri} lacks {missing} (needs 'taken': the date the "
                              "prices were taken, 'machines' and 'accelerators': name -> "
                              "hourly price)")
    for kind in ("machines", "accelerators"):
        entries = data[kind]
        bad = [k for k, v in (entries.items() if isinstance(entries, dict) else [])
               if isinstance(v, bool) or not isinstance(v, int | float) or v < 0]
        if not isinstance(entries, dict) or bad:
            raise PriceTableError(f"price table {uri}: {kind} must map names to hourly prices "
                                  f">= 0 (bad entries: {bad or kind})")
    return PriceTable(taken=str(data["taken"]), currency=str(data.get("currency", "USD")),
                      machines=dict(data["machines"]), accelerators=dict(data["accelerators"]),
                      source=str(data.get("source", "")), uri=uri)


def load_price_table(uri: str = "") -> PriceTable:
    """The price table at ``uri`` (``file://`` or ``gs://``); empty: the bundled one."""
    from caio_operators import storage

    uri = uri or default_price_table_uri()
    try:
        text = storage.read_text(uri)
    except Exception as exc:
        raise PriceTableError(f"cannot read the price table {uri}: {exc}. Point the "
                              "price_table param at a readable JSON file") from exc
    return parse_price_table(text, uri)


def hourly_cost(prices: PriceTable, *, target: str, replicas: int, machine_type: str = "",
                accelerator_type: str = "", accelerator_count: int = 0,
                local_machine_type: str = "") -> tuple[float | None, str]:
    """``(cost per hour, how it was priced)``; None when the target is not priced."""
    if target == "local":
        if not local_machine_type:
            return 0.0, "local target: cost 0 (set local_machine_type to price this machine)"
        price = prices.machine(local_machine_type)
        return price, (f"local target priced as one {local_machine_type} "
                       f"({price:g} {prices.currency}/h, prices of {prices.taken})")
    if target in CLOUD_TARGETS:
        node = prices.machine(machine_type)
        text = f"{replicas} x {machine_type} ({node:g}/h"
        if accelerator_type and accelerator_count:
            acc = prices.accelerator(accelerator_type)
            node += accelerator_count * acc
            text += f" + {accelerator_count} x {accelerator_type} at {acc:g}/h"
        return replicas * node, text + f") {prices.currency}, prices of {prices.taken}"
    return None, f"target={target}: not priced (the endpoint's machines are unknown)"


def cost_figures(cost_per_hour: float | None, *, max_sustainable_rps: float | None,
                 throughput_rps: float | None, instances_per_request: int = 1
                 ) -> dict[str, Any]:
    """Cost per hour and per 1,000 predictions (a prediction = one instance), and the
    throughput it was computed at: max sustainable when known, else the measured one."""
    if max_sustainable_rps is not None and max_sustainable_rps > 0:
        basis, rps = "max_sustainable_rps", float(max_sustainable_rps)
    elif throughput_rps is not None and throughput_rps > 0:
        basis, rps = "throughput_rps", float(throughput_rps)
    else:
        basis, rps = None, None
    per_1k = None
    if cost_per_hour is not None and rps:
        predictions_per_hour = rps * 3600.0 * max(int(instances_per_request), 1)
        per_1k = cost_per_hour / predictions_per_hour * 1000.0
    note = {"max_sustainable_rps": "at the max sustainable throughput (peak search)",
            "throughput_rps": "at the measured throughput: no peak search was run, so this "
                              "is an upper bound on the cost at full load",
            None: "no throughput measured"}[basis]
    return {"cost_per_hour": cost_per_hour, "cost_per_1k": per_1k, "cost_basis": basis,
            "cost_basis_rps": rps, "cost_note": note}

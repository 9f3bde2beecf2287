"""What the DAG files share, built once: the Params from the spec schema, and the chain of
one benchmark run.

``caio_load_test`` runs the chain once after ``validate``; ``caio_version_sweep`` runs it as
a task group mapped over its variants. The chain::

    export -> deploy (setup) -> prepare_metrics -> choose_load -> load | load_gke
           -> undeploy (teardown, always) -> harvest (all_done)

Harvest runs after the teardown (stopping the server flushes its last records) and even
when the load failed. Imports are the DAG files' own (operators, ``airflow.sdk``): nothing
heavy at parse time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Param

from caio_operators import assets, resources
from caio_operators.operators import (
    HOST_POOL,
    LOAD_GKE,
    LOAD_HERE,
    ChooseLoadTaskOperator,
    CreateLocustMetricsOperator,
    DeployModelOperator,
    ExportServingModelOperator,
    HarvestMetricsOperator,
    RunLoadTestOperator,
    UndeployModelOperator,
)
from caio_operators.spec import param_schema

#: JSON-schema keys of the spec schema that Param takes as arguments of its own
_FORM_ONLY = ("default", "examples")


def run_schema(repo: Path) -> dict[str, dict[str, Any]]:
    """The params' schema, with the local defaults under ``$CAIO_HOME`` (default
    ``<repo>/.caio``) and the sample images of ``$CAIO_IMAGES`` (default: the package's)."""
    return param_schema(
        local_root=os.environ.get("CAIO_HOME", str(repo / ".caio")),
        images_dir=os.environ.get("CAIO_IMAGES") or str(resources.find("test_images")),
    )


def dag_params(schema: dict[str, dict[str, Any]]) -> dict[str, Param]:
    """One ``Param`` per param: the Trigger form's fields, sections and help text."""
    return {name: Param(prop["default"], **{k: v for k, v in prop.items()
                                            if k not in _FORM_ONLY})
            for name, prop in schema.items()}


@dataclass(frozen=True)
class Chain:
    """The ends of one run's chain, to wire it into a DAG."""

    export: ExportServingModelOperator
    harvest: HarvestMetricsOperator


def benchmark_chain(spec: Any, *, group: str | None = None) -> Chain:
    """The chain of one run on ``spec`` (``validate``'s or ``plan``'s XCom), in the DAG (or
    task group) being defined. ``group``: the id of the mapped task group it is built in, so
    harvest pulls the deploy output of its own map index."""
    export = ExportServingModelOperator(  # TensorFlow on this machine, whatever the target
        task_id="export", spec=spec, pool=HOST_POOL, execution_timeout=timedelta(minutes=30))
    deploy = DeployModelOperator(
        task_id="deploy", spec=spec, execution_timeout=timedelta(minutes=30))
    prepare = CreateLocustMetricsOperator(
        task_id="prepare_metrics", spec=spec, deployment=deploy.output,
        execution_timeout=timedelta(minutes=10))
    choose_load = ChooseLoadTaskOperator(
        task_id="choose_load", spec=spec, execution_timeout=timedelta(minutes=1))
    # Locust here: one load of this machine at a time (the host pool); on GKE: no pool
    load = RunLoadTestOperator(
        task_id=LOAD_HERE, spec=spec, deployment=deploy.output, pool=HOST_POOL,
        execution_timeout=timedelta(hours=25))
    load_gke = RunLoadTestOperator(
        task_id=LOAD_GKE, spec=spec, deployment=deploy.output,
        execution_timeout=timedelta(hours=25))
    undeploy = UndeployModelOperator(
        task_id="undeploy", deployment=deploy.output, spec=spec,
        execution_timeout=timedelta(minutes=30))
    # Pulled by template, not as deploy.output: a setup's direct downstream tasks must use
    # all_success, and harvest runs all_done (also when deploy failed: then null).
    pulled = ("{{ ti.xcom_pull(task_ids='deploy') | tojson }}" if group is None else
              f"{{{{ ti.xcom_pull(task_ids='{group}.deploy', map_indexes=ti.map_index) "
              "| tojson }}")
    harvest = HarvestMetricsOperator(
        task_id="harvest", spec=spec, export_info=export.output, deployment=pulled,
        trigger_rule="all_done", execution_timeout=timedelta(hours=1),
        outlets=assets.HARVESTED)
    export >> deploy >> prepare >> choose_load >> [load, load_gke]
    load >> undeploy.as_teardown(setups=deploy)
    load_gke >> undeploy
    undeploy >> harvest
    return Chain(export, harvest)

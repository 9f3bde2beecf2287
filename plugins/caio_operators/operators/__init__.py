"""Thin operators: templated fields in, one pipeline call, a small dict out."""

from caio_operators.operators.analyse import AnalyseRunOperator
from caio_operators.operators.deploy import DeployModelOperator, UndeployModelOperator
from caio_operators.operators.export import ExportServingModelOperator
from caio_operators.operators.harvest import HarvestMetricsOperator
from caio_operators.operators.load import (
    HOST_POOL,
    LOAD_GKE,
    LOAD_HERE,
    ChooseLoadTaskOperator,
    RunLoadTestOperator,
)
from caio_operators.operators.metrics import CreateLocustMetricsOperator
from caio_operators.operators.sweep import (
    CompareSweepOperator,
    HistoryReportOperator,
    PlanSweepOperator,
    WaitForPreviousVariantSensor,
)
from caio_operators.operators.validate import ValidateRunSpecOperator

__all__ = [
    "HOST_POOL",
    "LOAD_GKE",
    "LOAD_HERE",
    "AnalyseRunOperator",
    "ChooseLoadTaskOperator",
    "CompareSweepOperator",
    "CreateLocustMetricsOperator",
    "DeployModelOperator",
    "ExportServingModelOperator",
    "HarvestMetricsOperator",
    "HistoryReportOperator",
    "PlanSweepOperator",
    "RunLoadTestOperator",
    "UndeployModelOperator",
    "ValidateRunSpecOperator",
    "WaitForPreviousVariantSensor",
]

"""Workflows: a YAML file describing a whole batch job, and running it.

:mod:`geounet.workflow.config` is the file's schema and loader, :mod:`geounet.workflow.run`
runs it (locally or on Dask: :mod:`geounet.workflow.dask`).
"""

from geounet.workflow.config import (
    ExecutorConfig,
    InputsConfig,
    OutputsConfig,
    ScheduleConfig,
    VectorizeOptions,
    Workflow,
    load_workflow,
    read_input_list,
)
from geounet.workflow.run import (
    HTML_REPORT,
    LOCK,
    MANIFEST,
    REPORT,
    STAGING,
    Item,
    ItemResult,
    RunReport,
    discover_inputs,
    plan_items,
    run_workflow,
)

__all__ = [
    "HTML_REPORT",
    "LOCK",
    "MANIFEST",
    "REPORT",
    "STAGING",
    "ExecutorConfig",
    "InputsConfig",
    "Item",
    "ItemResult",
    "OutputsConfig",
    "RunReport",
    "ScheduleConfig",
    "VectorizeOptions",
    "Workflow",
    "discover_inputs",
    "load_workflow",
    "plan_items",
    "read_input_list",
    "run_workflow",
]

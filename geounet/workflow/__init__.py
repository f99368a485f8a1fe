"""Workflows: a YAML file describing a whole batch job, validated before any work.

:mod:`geounet.workflow.config` is the file's schema and loader.
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

__all__ = [
    "ExecutorConfig",
    "InputsConfig",
    "OutputsConfig",
    "ScheduleConfig",
    "VectorizeOptions",
    "Workflow",
    "load_workflow",
    "read_input_list",
]

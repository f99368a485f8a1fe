"""Workflows: a YAML file describing a whole batch job, and running it.

The modules, each importing only those listed before it:

- :mod:`~geounet.workflow.config`: the file's schema and loader (:func:`load_workflow`);
- :mod:`~geounet.workflow.summary`: what an item's outputs hold, read back from them;
- :mod:`~geounet.workflow.manifest`: the output folder's state: manifest, lock, leftovers;
- :mod:`~geounet.workflow.plan`: the inputs and each one's output paths (:class:`Item`);
- :mod:`~geounet.workflow.pipeline`: one item, image -> mask -> vectors -> preview, retried;
- :mod:`~geounet.workflow.dask`: the items as Dask tasks (``executor: dask``);
- :mod:`~geounet.workflow.run`: a whole run and its report (:func:`run_workflow`).
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
from geounet.workflow.manifest import HTML_REPORT, LOCK, MANIFEST, REPORT, STAGING
from geounet.workflow.pipeline import ItemResult
from geounet.workflow.plan import Item, discover_inputs, plan_items
from geounet.workflow.run import RunReport, run_workflow
from geounet.workflow.summary import ClassSummary, ItemSummary

__all__ = [
    "HTML_REPORT",
    "LOCK",
    "MANIFEST",
    "REPORT",
    "STAGING",
    "ClassSummary",
    "ExecutorConfig",
    "InputsConfig",
    "Item",
    "ItemResult",
    "ItemSummary",
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

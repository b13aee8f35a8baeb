"""Problem sources: seeded, index-addressable generators and dataset loaders.

Importing this package registers the built-in sources: ``arithmetic``, ``countdown``,
``word_problems``, ``latex_math``, ``code``, ``format``, and the loaders ``jsonl`` and
``hf_dataset``. Plugins add more through the ``thinkgym.tasks`` entry-point group.
"""

from thinkgym.tasks.base import TASKS, Item, TaskSource, format_solution, list_tasks, make_task, register_task

# Imported for their registrations.
from thinkgym.tasks import arithmetic, code_problems, format_task, latex_math, word_problems  # noqa: E402,F401  isort: skip
from thinkgym.tasks.loaders import DatasetRowError, HFDatasetSource, JsonlSource  # noqa: E402

__all__ = [
    "TASKS",
    "DatasetRowError",
    "HFDatasetSource",
    "Item",
    "JsonlSource",
    "TaskSource",
    "format_solution",
    "list_tasks",
    "make_task",
    "register_task",
]

"""Problem sources: seeded, index-addressable generators and dataset loaders."""

from thinkgym.tasks.base import TASKS, Item, TaskSource, list_tasks, make_task, register_task

__all__ = ["TASKS", "Item", "TaskSource", "list_tasks", "make_task", "register_task"]

"""One registry from ``clip_task`` to a task: data contract, loss, metrics. Independent of the method."""

from ..data.dataset_info import TASKS as DATA_KINDS
from .base import CaptionSet, HeadScores, Task, TrainingSet
from .classification import ClassificationTask
from .retrieval import ImageToTextTask


TASKS: dict[str, type[Task]] = {task.name: task for task in (ClassificationTask, ImageToTextTask)}
if set(TASKS) != set(DATA_KINDS):  # a task needs readers for its samples (data/readers.py), and readers a task
    raise ImportError(f"tasks {sorted(TASKS)} and the data kinds the readers produce {sorted(DATA_KINDS)} differ.")


def get_task(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"clip_task: `{name}` is not one of {sorted(TASKS)}.")
    return TASKS[name]


__all__ = [
    "TASKS",
    "CaptionSet",
    "ClassificationTask",
    "HeadScores",
    "ImageToTextTask",
    "Task",
    "TrainingSet",
    "get_task",
]

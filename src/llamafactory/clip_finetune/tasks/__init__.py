"""One registry from ``clip_task`` to a task: data contract, loss, metrics. Independent of the method."""

from .base import CaptionSet, HeadScores, Task, TrainingSet
from .classification import ClassificationTask
from .retrieval import ImageToTextTask


TASKS: dict[str, type[Task]] = {task.name: task for task in (ClassificationTask, ImageToTextTask)}


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

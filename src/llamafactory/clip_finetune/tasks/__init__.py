"""Tasks: data, loss and metrics. Independent of the method (which parameters train)."""

from .classification import ClassificationTask
from .retrieval import ImageToTextTask


TASKS = {"classification": ClassificationTask, "image_to_text": ImageToTextTask}

__all__ = ["TASKS", "ClassificationTask", "ImageToTextTask"]

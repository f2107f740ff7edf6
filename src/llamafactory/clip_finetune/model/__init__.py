from .loader import load_clip
from .task_model import ClipTaskModel


__all__ = ["ClipTaskModel", "load_clip"]

from .families import TextTokenizer, family_of
from .loader import load_clip
from .task_model import ClipTaskModel


__all__ = ["ClipTaskModel", "TextTokenizer", "family_of", "load_clip"]

from .dataset_info import DatasetAttr, get_dataset_attrs
from .loader import ClipDatasets, load_clip_datasets


__all__ = ["ClipDatasets", "DatasetAttr", "get_dataset_attrs", "load_clip_datasets"]

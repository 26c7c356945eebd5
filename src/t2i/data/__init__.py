"""Data: the embedded `shapes` dataset and one stream of samples from any source."""

from t2i.data.sample import Sample

__all__ = ["Sample"]

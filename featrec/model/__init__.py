"""BERT4Rec with fused side features: per-feature embeddings, fusion, the encoder."""

from featrec.model.bert4rec import BERT4Rec, EncoderOutput, build_model
from featrec.model.embeddings import ColumnConfig, FeatureConfig, feature_configs

__all__ = [
    "BERT4Rec",
    "ColumnConfig",
    "EncoderOutput",
    "FeatureConfig",
    "build_model",
    "feature_configs",
]

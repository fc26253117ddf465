"""The models: per-feature embeddings, fusion, encoders, one protocol (docs/design.md §9).

``MODEL_KINDS`` maps ``model.kind`` to its class; :func:`build_model` is the only place
that chooses one.
"""

from __future__ import annotations

import torch

from featrec.model.bert4rec import BERT4Rec, EncoderOutput
from featrec.model.din import DIN
from featrec.model.embedding_mlp import EmbeddingMLP
from featrec.model.embeddings import ColumnConfig, FeatureConfig, feature_configs
from featrec.model.protocol import Objective, RecModel

MODEL_KINDS: dict[str, type[RecModel]] = {
    "bert4rec": BERT4Rec,
    "embedding_mlp": EmbeddingMLP,
    "din": DIN,
}


def build_model(
    spec,
    num_items: int,
    features: list[FeatureConfig],
    item_tables: dict[str, torch.Tensor],
    item_counts: torch.Tensor | None = None,
    trained_items: int | None = None,
) -> RecModel:
    """The model a (resolved) spec asks for; behavior-only specs give one without features.
    ``item_counts`` (I,), the training events per item, serve the non-uniform samplers of
    ``train.sampler`` (training passes them; inference needs no objective);
    ``trained_items``: ids from it on are cold items, which training leaves out."""
    model = MODEL_KINDS[spec.model.kind].from_spec(spec, num_items, features, item_tables)
    model.trained_items = trained_items
    t = spec.train
    if t.loss != "ce":
        model.objective = Objective(
            t.loss, t.negatives, t.gbce_t, t.negative_sampler, item_counts, trained_items
        )
    return model


__all__ = [
    "DIN",
    "MODEL_KINDS",
    "BERT4Rec",
    "ColumnConfig",
    "EmbeddingMLP",
    "EncoderOutput",
    "FeatureConfig",
    "RecModel",
    "build_model",
    "feature_configs",
]

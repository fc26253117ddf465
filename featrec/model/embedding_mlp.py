"""Embedding&MLP baseline (YouTube-DNN style): mean-pooled history, side features, an MLP.

Shape letters: B batch, L window length, D model dim, I items.

Position ``t`` is predicted from the mean of the embeddings of the items before it (item
id plus item features, fused by sum), the user's features and the request-known event
features of position ``t`` itself; then an MLP and a softmax over all items. No attention,
no Cloze task: the ablation table shows what those add. The representation of every
position depends only on what precedes it, so one pass over a window trains on every
position (or on ``train.next_item_share`` of them), and ``hidden[:, -1]`` of an inference
batch scores the predicted slot, exactly as for BERT4Rec.
"""

from __future__ import annotations

import torch
from torch import nn

from featrec.batching import Batch, SequenceData, next_item_batch
from featrec.ids import MASK, PAD
from featrec.model.bert4rec import EncoderOutput, _init_weights
from featrec.model.embeddings import FeatureConfig, NamedModules
from featrec.model.protocol import RecModel, labelled_loss
from featrec.spec import ModelSpec, Spec


class LookBackModel(RecModel):
    """What the look-back baselines share: item tokens (id plus item features, fused by
    sum), the user's features and the request-known event features of each position, all
    at the model's width; next-item training windows (:func:`next_item_batch`)."""

    min_train_events = 2  # a next item after at least one event

    def __init__(
        self,
        model: ModelSpec,
        num_items: int,
        features: list[FeatureConfig],
        item_tables: dict[str, torch.Tensor],
        request_known: frozenset[str],  # names of event features known at request time
    ) -> None:
        super().__init__()
        dim = model.dim
        self.item_features = [f for f in features if f.scope == "item"]
        self.user_features = [f for f in features if f.scope == "user"]
        self.context_features = [f for f in features if f.name in request_known]
        used = self.item_features + self.user_features + self.context_features
        self.add_feature_inputs(used, item_tables)
        self.project = NamedModules({f.name: nn.Linear(f.dim, dim) for f in used if f.dim != dim})
        self.item_embedding = nn.Embedding(num_items, dim, padding_idx=PAD)
        self.output_bias = nn.Parameter(torch.zeros(num_items))
        # width of the side inputs: one model-wide vector per user and context feature
        self.side_width = dim * (len(self.user_features) + len(self.context_features))
        self.add_layers(model)
        self.apply(_init_weights)

    def add_layers(self, model: ModelSpec) -> None:
        """The layers of the model kind on top of the shared inputs."""
        raise NotImplementedError

    @classmethod
    def from_spec(
        cls, spec: Spec, num_items: int, features: list[FeatureConfig], item_tables: dict
    ) -> LookBackModel:
        request_known = frozenset(
            f.name for f in spec.features if f.scope == "event" and not f.hidden_at_target
        )
        return cls(spec.model, num_items, features, item_tables, request_known)

    def training_batch(
        self, data: SequenceData, users: torch.Tensor, spec: Spec, generator: torch.Generator
    ) -> tuple[Batch, torch.Tensor]:
        t = spec.train
        return next_item_batch(
            data, users, spec.model.max_len, t.next_item_share, generator, t.crop_prob
        )

    def _feature(
        self, config: FeatureConfig, batch: Batch, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`embed_feature` (or, for ``items``, :meth:`item_feature`), projected to the
        model's width."""
        if items is None:
            embedded = self.embed_feature(config, batch)
        else:
            embedded = self.item_feature(config, items)
        return self.project[config.name](embedded) if config.name in self.project else embedded

    def item_tokens(self, items: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Item ids (any shape) → their id embeddings plus item features (..., D): the
        features of those items only (a chunk of candidates costs its own size)."""
        tokens = self.item_embedding(items)
        for config in self.item_features:
            tokens = tokens + self._feature(config, batch, items=items)
        return tokens

    def side_inputs(self, batch: Batch) -> list[torch.Tensor]:
        """The user's features and each position's request-known event features: a list of
        (B, L, D), empty without such features."""
        length = batch.item.shape[1]
        parts = []
        for config in self.user_features:
            user = self._feature(config, batch)  # (B, D)
            parts.append(user.unsqueeze(1).expand(-1, length, -1))
        for config in self.context_features:
            parts.append(self._feature(config, batch))  # (B, L, D)
        return parts


class EmbeddingMLP(LookBackModel):
    def add_layers(self, model: ModelSpec) -> None:
        dim = model.dim
        self.mlp = nn.Sequential(
            nn.Linear(dim + self.side_width, 4 * dim),
            nn.GELU(),
            nn.Dropout(model.dropout),
            nn.Linear(4 * dim, dim),
        )

    def loss(self, batch: Batch, labels: torch.Tensor) -> torch.Tensor:
        """The training loss (``train.loss``) at every labelled (next-item) position."""
        return labelled_loss(self, self(batch).hidden, labels)

    def forward(self, batch: Batch) -> EncoderOutput:
        items = batch.item  # (B, L)
        tokens = self.item_tokens(items, batch)  # (B, L, D)
        known = ((items != PAD) & (items != MASK)).unsqueeze(-1)  # (B, L, 1)
        # mean of the items strictly before each position: cumulative sums shifted by one
        # (rolled and the first zeroed: a slice and a pad pin the length in torch.export)
        first = torch.arange(items.shape[1], device=items.device).view(1, -1, 1) == 0
        summed = torch.roll(torch.cumsum(tokens * known, dim=1), 1, dims=1).masked_fill(first, 0)
        counts = torch.roll(torch.cumsum(known, dim=1), 1, dims=1).masked_fill(first, 0)
        parts = [summed / counts.clamp(min=1), *self.side_inputs(batch)]
        return EncoderOutput(hidden=self.mlp(torch.cat(parts, dim=-1)), fusion_weights=None)

    def last_hidden(self, batch: Batch) -> torch.Tensor:
        """(B, D) hidden state of each sequence's newest slot: the slot inference predicts."""
        return self(batch).hidden[:, -1]

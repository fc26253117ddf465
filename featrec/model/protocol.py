"""The model protocol: what every ``model.kind`` gives training, evaluation, serving and
export, so that none of them asks which model it holds (docs/design.md §9).

Shape letters: B batch, L window length, D model dim, N scored positions, I items, C
candidate items.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from featrec.ids import IGNORE, N_RESERVED
from featrec.ranking import as_index

if TYPE_CHECKING:
    from featrec.batching import Batch, SequenceData
    from featrec.model.embeddings import FeatureConfig
    from featrec.spec import Spec


# Every attention backend but cuDNN's. torch prefers cuDNN's for bf16 on Hopper GPUs, and
# there it made featrec's bf16 training step 4-8x slower than fp32 (an H200, ML-1M's masked,
# varying-length batches); without it bf16 runs at about fp32's speed (bench/RESULTS.md).
NOT_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def half_precision_attention(device: torch.device, enabled: bool):
    """The context of a training step under bf16 autocast (``enabled``) on ``device``: on
    CUDA, every attention backend but cuDNN's (it replaces a caller's own choice of
    backends for the step); elsewhere nothing. Entered around the step, outside a compiled
    loss, so ``torch.compile`` traces with the same backends."""
    if enabled and device.type == "cuda":
        return sdpa_kernel(NOT_CUDNN)
    return contextlib.nullcontext()


class RecModel(nn.Module):
    """A sequential recommender: from encoded histories to item scores.

    Subclasses set ``min_train_events`` and implement ``from_spec``, ``training_batch``,
    ``loss``, ``forward`` (an :class:`~featrec.model.bert4rec.EncoderOutput`),
    ``last_hidden`` and, where hidden states are transformed before scoring, ``item_query``;
    they own ``item_embedding`` and ``output_bias``.
    """

    # training events a user needs for one training target (a masked item: 1; a next item
    # after a history: 2); users with fewer are left out of training batches
    min_train_events: ClassVar[int] = 1
    # train.loss with sampled negatives (sampled_softmax, gbce; set by build_model); None: ce
    objective: Objective | None = None
    # ids from this one on are cold items (no events: fusion.output_items), which training
    # neither predicts nor draws as negatives; None: none
    trained_items: int | None = None
    item_embedding: nn.Embedding
    output_bias: nn.Parameter

    @classmethod
    def from_spec(
        cls,
        spec: Spec,
        num_items: int,
        features: list[FeatureConfig],
        item_tables: dict[str, torch.Tensor],
    ) -> RecModel:
        raise NotImplementedError

    @property
    def num_items(self) -> int:
        return self.item_embedding.num_embeddings

    def training_batch(
        self,
        data: SequenceData,
        users: torch.Tensor,
        spec: Spec,
        generator: torch.Generator,
    ) -> tuple[Batch, torch.Tensor]:
        """Inputs and labels (B, L) of one training step for ``users`` (IGNORE outside the
        loss); drawn on the CPU from ``generator``."""
        raise NotImplementedError

    def loss(self, batch: Batch, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (on the model's device)."""
        raise NotImplementedError

    def last_hidden(self, batch: Batch) -> torch.Tensor:
        """(B, D) hidden state of each window's newest slot: the slot inference predicts."""
        raise NotImplementedError

    def predict(self, batch: Batch, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of the newest slot of each window: every item (B, I), reserved ids at -inf;
        or, with ``items`` (C,) item ids, those items only (B, C). What serving and export
        call; ranking calls :meth:`item_scorer` and scores the items in chunks."""
        score = self.item_scorer(batch)
        if items is not None:
            return score(items)
        return score(None)

    def item_scorer(self, batch: Batch) -> Callable[[torch.Tensor | None], torch.Tensor]:
        """A function scoring items for the newest slot of each window: ids (C,) → (B, C),
        ids (B, C), a row per window → (B, C), None → every item (B, I) with reserved ids at
        -inf. The window is read once; each call is then one product. Models whose scores
        depend on the candidate beyond one hidden state per window (DIN's target attention)
        override it."""
        query = self.item_query(self.last_hidden(batch))  # (B, D)
        return functools.partial(self.score_query, query)

    def item_query(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, D) hidden states → (N, D) vectors compared with the item embeddings."""
        return hidden

    def score(
        self,
        hidden: torch.Tensor,
        items: torch.Tensor | None = None,
        days: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, D) hidden states → scores of every item (N, I), reserved ids at -inf; or, with
        ``items`` (C,) or (N, C) item ids, of those items only (N, C). ``days`` (N,): the
        requests' unix days, for models with trend features (ignored by the others)."""
        return self.score_query(self.item_query(hidden), items, days)

    def item_vectors(self, items: torch.Tensor | slice | None = None) -> torch.Tensor:
        """The vectors queries are compared with: of ``items`` (ids of any shape, (..., D);
        or a slice of ids, (C, D), a view), or of every item (I, D). The item embedding;
        BERT4Rec adds item features (fusion.output_items)."""
        weight = self.item_embedding.weight
        if items is None or isinstance(items, slice):
            return weight if items is None else weight[items]
        return self.item_embedding(items)

    def score_query(
        self,
        query: torch.Tensor,
        items: torch.Tensor | range | None = None,
        days: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`score` of (N, D) vectors already through :meth:`item_query` (``days``:
        for trend features, which only BERT4Rec has)."""
        if items is None:
            logits = query @ self.item_vectors().T + self.output_bias  # (N, I)
            logits[:, :N_RESERVED] = float("-inf")
            return logits
        index = as_index(items)
        weights, bias = self.item_vectors(index), self.output_bias[index]  # (.., C, D), (.., C)
        if isinstance(index, slice) or items.dim() == 1:
            return torch.addmm(bias, query, weights.T)  # (N, C), one pass
        return torch.einsum("nd,ncd->nc", query, weights) + bias  # (N, C)

    # -- the feature inputs every kind shares ----------------------------------------------

    def add_feature_inputs(
        self, features: list[FeatureConfig], item_tables: dict[str, torch.Tensor]
    ) -> None:
        """One embedding module per feature (``self.features``, by name) and the item
        features by item id as buffers (``item_table_<name>``: (I,) or (I, K)), so the
        ``[MASK]`` item brings the MASK row of every item feature."""
        from featrec.model.embeddings import FeatureEmbedding, NamedModules

        self.features = NamedModules({f.name: FeatureEmbedding(f) for f in features})
        for name, table in item_tables.items():
            self.register_buffer(f"item_table_{name}", table)

    def embed_feature(
        self, config: FeatureConfig, batch: Batch, per_item: bool = False
    ) -> torch.Tensor:
        """One feature's embeddings: item (B, L, D_f), or with ``per_item`` (I, D_f), one
        row per item id; user (B, D_f); event (B, L, D_f)."""
        if config.scope == "item":
            return self.item_feature(config, None if per_item else batch.item)
        module = self.features[config.name]
        return module([batch.column(config.scope, c.name) for c in config.columns])

    def item_feature(
        self, config: FeatureConfig, items: torch.Tensor | slice | None
    ) -> torch.Tensor:
        """An item feature's embeddings for ``items`` (ids of any shape or a slice of ids,
        (..., D_f)), or for every item id (None: (I, D_f))."""
        table = getattr(self, f"item_table_{config.name}")
        return self.features[config.name]([table if items is None else table[items]])

    def fusion_sources(self) -> list[str]:
        """Names of the sources whose learned per-token weights ``forward`` returns (gate
        fusion); empty when it returns none."""
        return []

    def request_inputs(self, batch: Batch) -> Batch:
        """What ``forward`` reads of a request window (history + predicted slot)."""
        return batch

    def static_fusion_weights(self) -> dict[str, float] | None:
        """Per-source weights that do not depend on the input (concat fusion), or None."""
        return None

    def prepare_export(self) -> None:
        """Make ``forward`` take one code path at every batch size (torch.export fixes
        data-dependent branches at the example's size)."""


class Objective:
    """A loss over the target and shared negatives (``train.loss``): ``sampled_softmax``,
    or ``gbce`` (gSASRec's generalised binary cross-entropy, its calibration ``t``).

    ``sampler`` (``train.sampler``) says how the negatives are drawn: ``uniform`` over the
    items, by ``popularity`` (training events + 1 per item), or ``in_batch`` (the step's own
    targets). The last two need ``counts`` (I,), the training events of each item id, and
    correct every score by the log of its draw probability (Yi et al., RecSys 2019), which
    for uniform draws is one constant that cancels.
    """

    def __init__(
        self,
        kind: str,
        negatives: int,
        t: float = 0.75,
        sampler: str = "uniform",
        counts: torch.Tensor | None = None,
        trained: int | None = None,
    ) -> None:
        self.kind, self.negatives, self.t, self.sampler = kind, negatives, t, sampler
        self.log_q: torch.Tensor | None = None  # (I,) log draw probability; None: uniform
        self._cdf: torch.Tensor | None = None  # (I,) popularity sampler's cumulative share
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if sampler != "uniform" and counts is not None:
            weights = counts.to(torch.float64) + 1.0
            weights[:N_RESERVED] = 0.0
            weights[trained or len(weights) :] = 0.0  # cold items are never drawn
            share = weights / weights.sum()
            self.log_q = share.log().to(torch.float32)
            self._cdf = share.cumsum(0)

    def __repr__(self) -> str:
        return f"Objective({self.kind!r}, {self.negatives}, t={self.t}, sampler={self.sampler!r})"

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log_q and the cdf on ``device``, moved once."""
        if self.log_q is None:
            raise RuntimeError(
                f"train.sampler: {self.sampler} needs the training events per item: build "
                "the model with item_counts (training does)"
            )
        if device not in self._on:
            cdf = None if self._cdf is None else self._cdf.to(device)
            self._on[device] = (self.log_q.to(device), cdf)
        return self._on[device]

    def draw(self, num_items: int, targets: torch.Tensor) -> torch.Tensor:
        """(K,) negative item ids for a step whose targets are (N,) ``targets``; random draws
        come from torch's generator of the targets' device (seeded by training, saved in
        checkpoints)."""
        device = targets.device
        if self.sampler == "in_batch":
            return targets.detach()
        if self.sampler == "popularity":
            _, cdf = self._tables(device)
            u = torch.rand(self.negatives, device=device, dtype=torch.float64) * cdf[-1]
            return torch.searchsorted(cdf, u, right=True).clamp_(N_RESERVED, num_items - 1)
        return torch.randint(N_RESERVED, num_items, (self.negatives,), device=device)

    def loss(
        self,
        positive: torch.Tensor,
        negative: torch.Tensor,
        targets: torch.Tensor,
        negatives: torch.Tensor,
        num_items: int,
    ) -> torch.Tensor:
        """Scores of each target (N,) and of the shared negatives (N, K) of ids (K,)."""
        if self.kind == "gbce":
            return gbce(positive, negative, targets, negatives, num_items - N_RESERVED, self.t)
        if self.sampler != "uniform":
            log_q, _ = self._tables(positive.device)
            positive, negative = positive - log_q[targets], negative - log_q[negatives]
        return sampled_softmax(positive, negative, targets, negatives)


def target_loss(
    model: RecModel,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    days: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training loss (``train.loss``) of (N, D) ``hidden`` states for (N,) ``targets``:
    cross-entropy over every item (ce), or ``model.objective`` over the target and shared
    negatives (sampled_softmax, gbce). ``days`` (N,): the targets' unix days (trend
    features)."""
    objective, trained = model.objective, model.trained_items or model.num_items
    if objective is None:
        logits = model.score(hidden, days=days)
        if trained < model.num_items:  # cold items are no one's target: not in the softmax
            logits = logits[:, :trained]
        return F.cross_entropy(logits, targets)
    negatives = draw_negatives(objective, trained, targets)
    positive = model.score(hidden, targets.unsqueeze(1), days).squeeze(1)  # (N,)
    negative = model.score(hidden, negatives, days)
    return objective.loss(positive, negative, targets, negatives, trained)


def gbce(
    positive: torch.Tensor,
    negative: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    items: int,
    t: float,
) -> torch.Tensor:
    """gSASRec's gBCE (Petrov & Macdonald, RecSys 2023): -(beta log sigmoid(s+) + sum of
    log(1 - sigmoid(s-))) per target, averaged, with beta = a (t (1 - 1/a) + 1/a) and
    a = K / (items - 1) the share of the other items drawn; accidental hits removed. t = 1
    undoes the overconfidence negative sampling teaches; t = 0 is plain binary
    cross-entropy."""
    count = negatives.shape[0]
    alpha = count / max(items - 1, 1)
    beta = alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)
    hits = negatives.unsqueeze(0) == targets.unsqueeze(1)  # (N, K)
    positive_term = beta * F.logsigmoid(positive)  # (N,)
    negative_term = F.logsigmoid(-negative).masked_fill(hits, 0.0).sum(dim=1)  # (N,)
    return -(positive_term + negative_term).mean()


def draw_negatives(objective: Objective, num_items: int, targets: torch.Tensor) -> torch.Tensor:
    """(K,) shared negatives for a step with (N,) ``targets`` (``objective.draw``; one
    function, so tests can fix the draw)."""
    return objective.draw(num_items, targets)


def sampled_softmax(
    positive: torch.Tensor, negative: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of each target (N,) against shared negatives (N, K) of ids (K,), with
    accidental hits (a negative equal to the row's target) removed. Scores arrive corrected
    for the sampler (uniform draws: nothing to correct)."""
    hits = negatives.unsqueeze(0) == targets.unsqueeze(1)  # (N, K)
    logits = torch.cat([positive.unsqueeze(1), negative.masked_fill(hits, float("-inf"))], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))


def labelled_loss(model: RecModel, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`target_loss` at the labelled positions of (B, L, D) ``hidden``."""
    labelled = labels != IGNORE  # (B, L)
    return target_loss(model, hidden[labelled], labels[labelled])

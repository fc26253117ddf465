"""BERT4Rec whose item tokens carry fused side features.

Shape letters: B batch, L window length, D model dim, N scored positions, I items.

Item features are buffers indexed by item id, so the ``[MASK]`` item brings the ``MASK``
row of every item feature: the model cannot see the attributes of the item it predicts.
Behavior-only is the same class built from a spec with no features: no side parameters,
and its ``forward`` takes no feature branch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from featrec.batching import Batch, SequenceData, causal_batch, causal_view, training_batch
from featrec.ids import IGNORE, PAD
from featrec.model.embeddings import FeatureConfig, NamedModules
from featrec.model.fusion import ATTENTION_FUSIONS, FUSIONS, ConcatFusion, GateFusion
from featrec.model.protocol import RecModel, target_loss
from featrec.spec import AgeFeature, FusionSpec, ModelSpec, PopularityFeature, Spec
from featrec.trends import BUCKETS, DAY, PREFIX, grouped_terms, trend_buckets


@dataclass
class EncoderOutput:
    hidden: torch.Tensor  # (B, L, D); (B, M, D) for the slots a query selected
    fusion_weights: torch.Tensor | None  # (B, L, S) for gate fusion; S = 1 + token features
    query_valid: torch.Tensor | None = None  # (B, M) bool: which of the M rows are real slots


class BERT4Rec(RecModel):
    """Bidirectional transformer trained with the Cloze task (masked items); or, with
    ``causal`` (train.objective next_item), SASRec's: causal attention, each position
    predicting the next item (see :func:`featrec.batching.causal_view`)."""

    min_train_events = 1  # one training event to mask (two with causal: one to predict)

    def __init__(
        self,
        model: ModelSpec,
        fusion: FusionSpec,
        num_items: int,
        features: list[FeatureConfig],
        item_tables: dict[str, torch.Tensor],
        trends: Sequence[PopularityFeature | AgeFeature] = (),
        causal: bool = False,
        after: frozenset[str] = frozenset(),  # event columns known after the event only
    ) -> None:
        super().__init__()
        dim = model.dim
        self.causal, self.after = causal, after
        if causal:
            self.min_train_events = 2
        self.user_token = fusion.user == "token" and any(f.scope == "user" for f in features)
        self.token_features = [f for f in features if not (self.user_token and f.scope == "user")]
        self.user_features = [f for f in features if self.user_token and f.scope == "user"]
        # fuse the item-level sources once per item when a batch has at least as many
        # tokens as there are items (see forward); export turns it off for one path at
        # every batch size
        self.fuse_per_item = any(f.scope == "item" for f in features)
        self.add_feature_inputs(features, item_tables)
        self.item_embedding = nn.Embedding(num_items, dim, padding_idx=PAD)
        self.position_embedding = nn.Embedding(model.max_len + 1, dim)  # +1: the user token
        # attention level: the features enter every layer's queries and keys as side
        # sources, and the tokens (the values) carry the item embedding, fused with the
        # features of fusion.token_scopes (by fusion.token_method) if any
        attention_level = fusion.method in ATTENTION_FUSIONS
        self.side_features = [
            f for f in self.token_features if attention_level and f.scope not in fusion.token_scopes
        ]
        self.fused_features = [f for f in self.token_features if f not in self.side_features]
        self.side_method = fusion.method if self.side_features else None
        if self.side_method:
            self.fuse_per_item = False  # side sources are looked up per token
            self.side_projection = NamedModules(
                {f.name: nn.Linear(f.dim, dim) for f in self.side_features if f.dim != dim}
            )
            # difsr: a map of its own per item or event feature; a user feature is the same
            # at every slot, so a map of its own would add one score to every key of a row,
            # which softmax ignores: user features steer the item's queries and keys instead,
            # as every feature does under nova
            self.decoupled = (
                [f.name for f in self.side_features if f.scope != "user"]
                if self.side_method == "difsr"
                else []
            )
            steers = len(self.side_features) > len(self.decoupled)
            sides = int(steers) + len(self.decoupled)
            self.side_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(sides))
        dims = {"item": dim} | {f.name: f.dim for f in self.fused_features}
        method = fusion.token_method if attention_level else fusion.method
        # with item ids alone there is nothing to fuse: no fusion parameters at all
        self.fusion = FUSIONS[method if len(dims) > 1 else "sum"](dims, dim)
        self.user_projection = NamedModules(
            {f.name: nn.Linear(f.dim, dim) for f in self.user_features if f.dim != dim}
        )
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(model.dropout)
        decoupled = len(self.decoupled) if self.side_method else 0
        self.layers = nn.ModuleList(
            EncoderLayer(dim, model.heads, model.dropout, model.attention_dropout, decoupled)
            for _ in range(model.layers)
        )
        # DIF-SR's auxiliary task: the masked item's categorical item features, predicted
        # from its hidden state (item features looked up by id, so the targets are at hand)
        self.aux_weight = fusion.aux_weight
        self.attribute_heads = NamedModules(
            {
                f.name: nn.Linear(dim, f.columns[0].cardinality)
                for f in features
                if fusion.aux_weight > 0 and f.scope == "item" and f.columns[0].kind != "float"
            }
        )
        # output head: transform, then scores tied to the item embedding (+ a bias per item)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.output_bias = nn.Parameter(torch.zeros(num_items))
        # fusion.output_items: a candidate's vector adds a projection of its item features
        self.output_features = [f for f in features if fusion.output_items and f.scope == "item"]
        self.output_projection = (
            nn.Linear(sum(f.dim for f in self.output_features), dim, bias=False)
            if self.output_features
            else None
        )
        # trend features (popularity, age as of the request): a score term per candidate,
        # query . E[bucket], from the tables in item_tables (featrec.trends)
        self.trends = [
            (f.name, f.type, getattr(f, "window_days", 0), getattr(f, "measure", ""))
            for f in trends
        ]
        self.trend_embedding = NamedModules(
            {name: nn.Embedding(BUCKETS, dim) for name, *_ in self.trends}
        )
        self.trend_tables = [key for key in item_tables if key.startswith(PREFIX)]
        self.apply(_init_weights)
        init = model.init if model.init != "auto" else ("torch" if self.side_method else "bert")
        if init == "torch":
            for layer in self.layers:
                layer.reset_parameters()

    @classmethod
    def from_spec(
        cls, spec: Spec, num_items: int, features: list[FeatureConfig], item_tables: dict
    ) -> BERT4Rec:
        known_after = {f.name for f in spec.features_in("event") if f.hidden_at_target}
        after = frozenset(c.name for f in features if f.name in known_after for c in f.columns)
        return cls(
            spec.model, spec.fusion, num_items, features, item_tables, spec.trend_features,
            causal=spec.train.objective == "next_item", after=after,
        )  # fmt: skip

    def training_batch(
        self, data: SequenceData, users: torch.Tensor, spec: Spec, generator: torch.Generator
    ) -> tuple[Batch, torch.Tensor]:
        t = spec.train
        if self.causal:
            return causal_batch(
                data, users, spec.model.max_len, t.next_item_share, self.after, generator,
                t.crop_prob,
            )  # fmt: skip
        return training_batch(
            data, users, spec.model.max_len, t.mask_prob, t.last_item_share, generator,
            t.crop_prob,
        )  # fmt: skip

    def loss(self, batch: Batch, labels: torch.Tensor) -> torch.Tensor:
        """The training loss (``train.loss``) at the masked slots; the last layer runs for
        those slots only (the same loss as scoring ``self(batch).hidden`` there)."""
        labelled = labels != IGNORE  # (B, L)
        out = self(batch, query=labelled)
        hidden, targets = out.hidden[out.query_valid], labels[labelled]  # (N, D), (N,)
        days = batch.event[DAY][labelled] if self.trends else None  # (N,) request days
        loss = target_loss(self, hidden, targets, days)
        for name, head in self.attribute_heads.items():  # fusion.aux_weight > 0
            loss = loss + self.aux_weight * self._attribute_loss(name, head(hidden), targets)
        return loss

    def _attribute_loss(
        self, name: str, logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """How well (N, C) ``logits`` predict item feature ``name`` of the masked items."""
        values = getattr(self, f"item_table_{name}")[targets]  # (N,) or (N, K) ids
        if values.dim() == 1:
            return F.cross_entropy(logits, values)
        present = torch.zeros_like(logits).scatter_(1, values, 1.0)  # multi-hot (N, C)
        present[:, PAD] = 0.0  # list padding is no attribute
        return F.binary_cross_entropy_with_logits(logits, present)

    def item_query(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)  # output transform (dense, GELU, LayerNorm), as BERT's

    def item_scorer(self, batch: Batch) -> Callable[[torch.Tensor | None], torch.Tensor]:
        query = self.item_query(self.last_hidden(batch))  # (B, D)
        days = batch.event[DAY][:, -1] if self.trends else None  # the requests' days
        return functools.partial(self.score_query, query, days=days)

    def score_query(
        self,
        query: torch.Tensor,
        items: torch.Tensor | range | None = None,
        days: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`RecModel.score_query`, plus (trend features) each candidate's trend terms
        as of the (N,) request ``days``: ``query · E_f[bucket_f(day, item)]``, gathered from
        the (N, 32) products with each feature's bucket embeddings."""
        scores = super().score_query(query, items)
        if not self.trends:
            return scores
        if days is None:
            raise ValueError("trend features score items as of a day: pass the request days")
        tables = {  # the buffers themselves (they follow the model's device)
            key.removeprefix(PREFIX): getattr(self, f"item_table_{key}")
            for key in self.trend_tables
        }
        per_bucket = [query @ self.trend_embedding[name].weight.T for name, *_ in self.trends]
        shared = items is None or isinstance(items, range) or items.dim() == 1
        if self.training and shared and query.shape[0] > 1:  # many target slots share a day
            unique, inverse = torch.unique(days, return_inverse=True)
            buckets = [
                trend_buckets(kind, window, tables, unique, items, measure)  # (U, C)
                for _, kind, window, measure in self.trends
            ]
            return scores + grouped_terms(per_bucket, buckets, inverse)
        for products, (_, kind, window, measure) in zip(per_bucket, self.trends, strict=True):
            buckets = trend_buckets(kind, window, tables, days, items, measure)  # (N, C)
            scores += products.gather(1, buckets)  # (N, 32) products, one per bucket
        return scores

    def item_vectors(self, items: torch.Tensor | slice | None = None) -> torch.Tensor:
        """The id embedding, plus (fusion.output_items) the projected item features."""
        vectors = super().item_vectors(items)
        if self.output_projection is None:
            return vectors
        embedded = [self.item_feature(f, items) for f in self.output_features]
        return vectors + self.output_projection(torch.cat(embedded, dim=-1))

    def fusion_sources(self) -> list[str]:
        if not isinstance(self.fusion, GateFusion):
            return []
        return ["item", *(f.name for f in self.fused_features)]

    def static_fusion_weights(self) -> dict[str, float] | None:
        return self.fusion.source_weights() if isinstance(self.fusion, ConcatFusion) else None

    def prepare_export(self) -> None:
        # torch.export would fix the per-item / per-token fusion choice at the example's size
        self.fuse_per_item = False

    def _embed(self, config: FeatureConfig, batch: Batch, per_item: bool = False) -> torch.Tensor:
        """:meth:`embed_feature`, user features as (B, 1, D_f): broadcast over the tokens."""
        embedded = self.embed_feature(config, batch, per_item)
        return embedded.unsqueeze(1) if config.scope == "user" else embedded

    def forward(
        self,
        batch: Batch,
        last_only: bool = False,
        query: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Hidden states of every slot (B, L, D); or only of the newest slot (``last_only``,
        B, 1, D: inference); or only of the slots where ``query`` (B, L) is true (B, M, D,
        M = most such slots in a row, each row's in position order, then padding rows marked
        false in ``query_valid``: training, where only masked slots are scored). The last
        layer then computes queries, attention output and feed-forward for those slots alone;
        their keys and values still cover every slot, so the results are the same."""
        items = batch.item  # (B, L)
        batch_size = items.shape[0]
        # item-level sources are functions of the item id: with at least as many tokens as
        # items (training, evaluation) the fusion transforms each item's once and looks the
        # results up (see featrec.model.fusion); with fewer (serving), it works per token
        per_item = self.fuse_per_item and items.numel() >= self.num_items
        item = self.item_embedding.weight if per_item else self.item_embedding(items)
        sources = {"item": item}  # (I, D) or (B, L, D)
        for config in self.fused_features:  # token level: fused into the tokens
            sources[config.name] = self._embed(config, batch, per_item)
        tokens, weights = self.fusion(sources, items if per_item else None)  # (B, L, D)
        side = self._side_sources(batch) if self.side_method else None
        padding = items == PAD  # (B, L)
        if self.user_features:
            user = sum(self._user_vector(c, batch) for c in self.user_features)  # (B, 1, D)
            tokens = torch.cat([user, tokens], dim=1)  # (B, 1 + L, D)
            padding = torch.cat([padding.new_zeros(batch_size, 1), padding], dim=1)
            if side is not None:  # the user token's queries and keys: its own vector alone
                steer = side[0]
                if steer is not None:
                    steer = F.pad(steer.expand(-1, items.shape[1], -1), (0, 0, 1, 0))
                side = [steer, *(F.pad(s, (0, 0, 1, 0)) for s in side[1:])]  # (S, B, 1 + L, D)
        # positions count back from the newest event, so the predicted slot is always 0;
        # the user token has the last row (max_len) whatever the batch's width
        total = tokens.shape[1]
        positions = torch.arange(items.shape[1] - 1, -1, -1, device=items.device)  # (L,)
        if self.user_features:
            own = torch.full((1,), self.position_embedding.num_embeddings - 1, device=items.device)
            positions = torch.cat([own, positions])  # (1 + L,)
        hidden = self.dropout(self.norm(tokens + self.position_embedding(positions)))
        attend = ~padding[:, None, None, :]  # (B, 1, 1, L): keys each query may attend to
        if self.causal:  # (B, 1, L, L): and none after it; each sees itself (a padding
            # slot before the first event would otherwise see no key, NaN in some kernels)
            before = torch.ones(total, total, dtype=torch.bool, device=items.device).tril()
            attend = (attend & before) | torch.eye(total, dtype=torch.bool, device=items.device)
        select, valid = None, None
        if last_only:
            select = torch.full((batch_size, 1), total - 1, device=items.device)
        elif query is not None:
            counts = query.sum(1)  # (B,)
            width = max(int(counts.max()), 1) if len(counts) else 1
            # the selected slots first, in position order (a stable sort of 0 = selected)
            select = torch.argsort((~query).to(torch.uint8), dim=1, stable=True)[:, :width]
            select = select + int(bool(self.user_features))  # past the user token
            valid = torch.arange(width, device=items.device) < counts[:, None]
        last = len(self.layers) - 1  # (enumerate's start= does not trace in torch 2.4's export)
        attend_last = attend  # the last layer's: the selected queries' rows of a causal mask
        if self.causal and select is not None:
            rows = select[:, None, :, None].expand(-1, 1, -1, total)
            attend_last = attend.expand(batch_size, 1, total, total).gather(2, rows)
        for number, layer in enumerate(self.layers):
            if number == last:
                hidden = layer(hidden, attend_last, select, side)
            else:
                hidden = layer(hidden, attend, None, side)
        if self.user_features and select is None:
            hidden = hidden[:, 1:]
        return EncoderOutput(hidden=hidden, fusion_weights=weights, query_valid=valid)

    def request_inputs(self, batch: Batch) -> Batch:
        """What the model reads of a request window (history + predicted slot): the window,
        or (causal) its :func:`causal_view`."""
        return causal_view(batch, self.after) if self.causal else batch

    def last_hidden(self, batch: Batch) -> torch.Tensor:
        """(B, D) hidden state of each request window's newest position: the predicted slot
        (causal: the newest event, carrying the request's features)."""
        return self(self.request_inputs(batch), last_only=True).hidden[:, -1]

    def _side_sources(self, batch: Batch) -> list[torch.Tensor | None]:
        """The features as side sources of attention-level fusion: ``[steer]`` or
        ``[steer, decoupled]`` (decoupled: the S sources stacked, (S, B, L, D)).
        ``steer`` (the sum of the features that steer the item's queries and keys: all of
        them under nova, the user features under difsr; None when there are none) and each
        decoupled source (difsr: one per item or event feature, its own score map) are
        (B, L, D), or (B, 1, D) when made of user features only; normalized (``steer`` also
        dropped out).
        The leakage rules hold as for the tokens: the features come from the same (masked)
        batch."""
        steer, decoupled = [], []
        for config in self.side_features:
            embedded = self._embed(config, batch)  # (B, L or 1, D_f)
            if config.name in self.side_projection:
                embedded = self.side_projection[config.name](embedded)
            (decoupled if config.name in self.decoupled else steer).append(embedded)
        norms = iter(self.side_norm)
        steered = self.dropout(next(norms)(sum(steer))) if steer else None
        if not decoupled:
            return [steered]
        # no dropout on the decoupled sources: drawing S masks over (B, L, D) took a fifth
        # of a difsr step on the CPU (bench/RESULTS.md); the tokens and steer keep theirs
        return [steered, torch.stack([next(norms)(s) for s in decoupled])]

    def _user_vector(self, config: FeatureConfig, batch: Batch) -> torch.Tensor:
        embedded = self._embed(config, batch)  # (B, 1, D_f)
        return (
            self.user_projection[config.name](embedded)
            if config.name in self.user_projection
            else embedded
        )


class EncoderLayer(nn.Module):
    """Post-LN transformer layer (as BERT) on torch's fused scaled-dot-product attention."""

    def __init__(
        self, dim: int, heads: int, dropout: float, attention_dropout: float, decoupled: int = 0
    ) -> None:
        super().__init__()
        self.heads = heads
        # difsr: queries and keys of each of ``decoupled`` side sources (their own score
        # maps); the sources share the model's width: D / S each, at least one per head
        per_head = max(1, dim // heads // max(decoupled, 1))
        self.side_width = heads * per_head
        # all sources' query and key projections in one batched matmul: (S, D, 2W), (S, 1, 2W)
        if decoupled:
            weight = torch.empty(decoupled, dim, 2 * self.side_width)
            nn.init.trunc_normal_(weight, std=0.02, a=-0.04, b=0.04)  # BERT's, as _init_weights
            self.side_weight = nn.Parameter(weight)
            self.side_bias = nn.Parameter(torch.zeros(decoupled, 1, 2 * self.side_width))
        else:
            self.register_parameter("side_weight", None)
            self.register_parameter("side_bias", None)
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        )
        self.norm_attention = nn.LayerNorm(dim)
        self.norm_feed_forward = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        """nn.TransformerEncoderLayer's initialisation: Xavier-uniform attention input
        projections with zero biases (as nn.MultiheadAttention), nn.Linear's default for the
        output projection (zero bias) and the feed-forward layers; LayerNorms at 1 and 0."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.out.bias)

    def forward(
        self,
        x: torch.Tensor,
        attend: torch.Tensor,
        select: torch.Tensor | None = None,
        side: list[torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """(B, L, D) → (B, L, D); with ``select`` (B, M) slot indices, → (B, M, D) for those
        slots, whose queries still attend to every key (the rest's cost is skipped). With
        ``side`` sources (``[steer, *decoupled]``), attention-level fusion: see
        :meth:`_side_attention`."""
        if side is not None:
            return self._side_attention(x, attend, select, side)
        batch, length, dim = x.shape
        heads = (self.heads, dim // self.heads)
        if select is not None:  # keys and values of every slot, queries of the selected
            weight, bias = self.qkv.weight, self.qkv.bias
            kv = F.linear(x, weight[dim:], bias[dim:]).view(batch, length, 2, *heads)
            k, v = kv.permute(2, 0, 3, 1, 4)  # each (B, H, L, D / H)
            x = x.gather(1, select.unsqueeze(-1).expand(-1, -1, dim))  # (B, M, D)
            length = x.shape[1]
            q = F.linear(x, weight[:dim], bias[:dim]).view(batch, length, *heads).transpose(1, 2)
        else:
            qkv = self.qkv(x).view(batch, length, 3, *heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, L, D / H)
        return self._finish(x, q, k, v, attend)

    def _finish(
        self,
        x: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attend: torch.Tensor,
        scale: float | None = None,
        width: int | None = None,
    ) -> torch.Tensor:
        """Attention of q (B, H, M, E) over k (B, H, L, E) and v (B, H, L, E_v) (its first
        ``width`` columns are the values; the rest padding), then the residual sublayers
        on x (B, M, D)."""
        batch, length, dim = x.shape
        p = self.attention_dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=p, scale=scale
        )
        if width is not None:
            attended = attended[..., :width]
        attended = attended.transpose(1, 2).reshape(batch, length, dim)  # (B, M, D)
        x = self.norm_attention(x + self.dropout(self.out(attended)))
        return self.norm_feed_forward(x + self.dropout(self.feed_forward(x)))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, length, dim = t.shape  # (B, L, D) → (B, H, L, D / H)
        return t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)

    def _side_attention(
        self,
        x: torch.Tensor,
        attend: torch.Tensor,
        select: torch.Tensor | None,
        side: list[torch.Tensor | None],
    ) -> torch.Tensor:
        """Values from the item stream ``x`` alone; the side sources steer where to look.

        ``side = [steer]`` or ``[steer, decoupled]``, ``decoupled`` (S, B, L, D). The item's
        queries and keys come from ``x + steer`` (nova: every feature is in ``steer``). Each
        decoupled source (difsr) adds a score map of its own, q_i k_i^T / sqrt(W / H) with its
        own projections (W = ``side_width``; all S in one batched matmul):
        the sources' queries and keys are concatenated to the item's along the head
        dimension (their queries prescaled so that one explicit scale, 1 / sqrt(D / H),
        serves every map), and the values are zero-padded to that width, so one fused
        scaled-dot-product attention computes the summed map."""
        dim, length = x.shape[-1], x.shape[1]
        weight, bias = self.qkv.weight, self.qkv.bias
        steer = side[0]

        def rows(t: torch.Tensor) -> torch.Tensor:  # the queried slots of (B, L or 1, W)
            if select is None or t.shape[1] == 1:
                return t
            return t.gather(1, select.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

        steered = x if steer is None else x + steer  # (B, L, D)
        queried = rows(x)  # (B, M, D): the residual stream of the queried slots
        v = self._heads(F.linear(x, weight[2 * dim :], bias[2 * dim :]))  # (B, H, L, D / H)
        k = F.linear(steered, weight[dim : 2 * dim], bias[dim : 2 * dim])
        q = F.linear(rows(steered), weight[:dim], bias[:dim])
        if len(side) == 1:
            return self._finish(queried, self._heads(q), self._heads(k), v, attend)
        decoupled = side[1]  # (S, B, L, D)
        sources, batch = decoupled.shape[:2]
        width, head_dim = self.side_width, dim // self.heads
        prescale = (head_dim / (width // self.heads)) ** 0.5
        projected = torch.baddbmm(
            self.side_bias, decoupled.reshape(sources, batch * length, dim), self.side_weight
        ).view(sources, batch, length, 2 * width)  # (S, B, L, 2W)
        side_q, side_k = projected.split(width, dim=-1)  # each (S, B, L, W)
        if select is not None:
            index = select[None, :, :, None].expand(sources, -1, -1, width)
            side_q = side_q.gather(2, index)  # (S, B, M, W)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (S, B, L, W) → (B, H, L, S W / H)
            s, b, n, w = t.shape
            t = t.view(s, b, n, self.heads, w // self.heads).permute(1, 3, 2, 0, 4)
            return t.reshape(b, self.heads, n, s * (w // self.heads))

        k = torch.cat([self._heads(k), heads(side_k)], dim=-1)  # (B, H, L, E)
        q = torch.cat([self._heads(q), heads(side_q * prescale)], dim=-1)  # (B, H, M, E)
        # values as wide as queries and keys: the fused kernel wants E == E_v (a narrower v
        # falls back to the unfused path, ~2x slower); the padding reads back as zeros
        v = F.pad(v, (0, q.shape[-1] - head_dim))
        return self._finish(queried, q, k, v, attend, scale=head_dim**-0.5, width=head_dim)


def _init_weights(module: nn.Module) -> None:
    """BERT's initialisation: truncated normal (std 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)

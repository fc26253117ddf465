"""DIN (Deep Interest Network, Zhou et al., KDD 2018): target attention over the history.

Shape letters: B batch, L window length, D model dim, N scored positions, C candidate
items, I items.

Position ``t`` of a window and a candidate item ``c`` are scored from the items before
``t`` pooled by attention whose *query is the candidate* (its id embedding plus its item
features), the user's features and the request-known event features of ``t`` (as
Embedding&MLP has them), through an MLP, then compared with the candidate's embedding:

    score(t, c) = MLP(W·pool_c(history before t) + V·side_t) · e_c + b_c

It is the step between Embedding&MLP (one mean over the history for every candidate) and
self-attention (the history attends to itself). The attention is scaled dot product
rather than the paper's small MLP "activation unit", so it runs on
``scaled_dot_product_attention``; a learned key with a zero value is always visible, so a
candidate can attend to nothing in the history (the paper's weights are not normalised for
the same reason) and an empty history is well defined.

The pooled history differs per candidate, so every (position, candidate) pair costs one
attention over the history: training uses ``train.loss: sampled_softmax`` (the target and
``train.negatives`` shared negatives per step) and ranking scores the items in chunks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from featrec.batching import Batch
from featrec.ids import IGNORE, MASK, N_RESERVED, PAD
from featrec.model.embedding_mlp import LookBackModel
from featrec.model.protocol import Objective, draw_negatives
from featrec.spec import ModelSpec

ITEM_CHUNK = 1024  # candidate items scored at once when ranking every item
BLOCK = 16  # window slots summed at once for the negatives' pooled histories in training


class DIN(LookBackModel):
    def add_layers(self, model: ModelSpec) -> None:
        dim = model.dim
        self.query = nn.Linear(dim, dim, bias=False)  # candidate → attention query
        self.pooled_in = nn.Linear(dim, dim)  # first MLP layer, the pooled history's part
        self.side_in = nn.Linear(self.side_width, dim, bias=False) if self.side_width else None
        # normalised like BERT4Rec's output transform: scores start on the scale of the item
        # embeddings, not of a product of two small initial weights
        self.mlp_out = nn.Sequential(
            nn.GELU(), nn.Dropout(model.dropout), nn.Linear(dim, dim), nn.LayerNorm(dim)
        )
        self.null_key = nn.Parameter(torch.zeros(dim))  # the "nothing in the history" slot

    def forward(self, batch: Batch, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.predict(batch, items)

    def last_hidden(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError(
            "DIN's hidden state depends on the candidate item: score with predict(batch)"
        )

    def loss(self, batch: Batch, labels: torch.Tensor) -> torch.Tensor:
        """``train.loss`` (sampled softmax or gBCE) at every labelled (next-item) position:
        the target against ``train.negatives`` items drawn for the whole batch."""
        labelled = labels != IGNORE  # (B, L)
        targets = labels[labelled]  # (N,)
        objective = self.objective or Objective("sampled_softmax", 100)
        trained = self.trained_items or self.num_items  # cold items are never negatives
        negatives = draw_negatives(objective, trained, targets)  # (K,)
        scores = self.training_scores(batch, labelled, negatives)
        return objective.loss(scores[:, 0], scores[:, 1:], targets, negatives, trained)

    def training_scores(
        self, batch: Batch, labelled: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        """Scores (N, 1 + K) at the N ``labelled`` (B, L) positions, in ``nonzero`` order:
        of the item there, then of the negatives (K,); each from the events before it.

        The target at position t is the window's own item there: its attention over the
        items before it is causal self-attention with the candidate as the query, one pass
        per window. A negative's attention logits over a window do not depend on the
        position, so its pooled history at position t is a prefix sum of exp-weighted tokens
        up to t - 1: sums over blocks of ``BLOCK`` slots (matmuls), the blocks before t's
        block accumulated, plus the slots of t's block before it (a matmul per target). Both
        give the numbers of attending with everything from t on hidden, and nothing of size
        (B, K, L, D) is built.
        """
        rows, ends = labelled.nonzero(as_tuple=True)  # (N,), (N,): window and position
        items = batch.item
        tokens, known, side = self._inputs(batch)
        count, length, dim = tokens.shape
        earlier = torch.ones(length, length, dtype=torch.bool, device=items.device).tril(-1)
        own = self._pool(self._memory(tokens, known.unsqueeze(1) & earlier), items, batch)
        pooled_target = own[rows, ends].unsqueeze(1)  # (N, 1, D)
        target = items[rows, ends].unsqueeze(1)  # (N, 1)

        query = self.query(self.item_tokens(negatives, batch))  # (K, D)
        scale = dim**-0.5
        logits = torch.einsum("bld,kd->bkl", tokens, query) * scale  # (B, K, L)
        logits = logits.masked_fill(~known.unsqueeze(1), float("-inf"))
        null = (query @ self.null_key * scale).expand(count, -1)  # (B, K)
        top = torch.maximum(logits.amax(dim=2), null).detach()  # (B, K): for exp's range
        weights = torch.exp(logits - top.unsqueeze(2))  # (B, K, L), 0 where not known
        # the window in blocks of BLOCK slots: the sums of each block (B, n, K, D), then of
        # all blocks before each one; a target at t = BLOCK * j + o adds the first o slots
        # of block j (the history before position t ends at t - 1; targets have t >= 1)
        blocks = -(-length // BLOCK)
        pad = blocks * BLOCK - length
        weights = F.pad(weights, (0, pad)).unflatten(2, (blocks, BLOCK))  # (B, K, n, S)
        weights = weights.transpose(1, 2)  # (B, n, K, S)
        values = F.pad(tokens, (0, 0, 0, pad)).unflatten(1, (blocks, BLOCK))  # (B, n, S, D)
        values = torch.cat([values, torch.ones_like(values[..., :1])], dim=3)  # + weight sum
        whole = torch.matmul(weights, values)  # (B, n, K, D + 1)
        # the blocks before each (shifted, not cumsum - whole: no cancellation)
        earlier_blocks = F.pad(torch.cumsum(whole[:, :-1], dim=1), (0, 0, 0, 0, 1, 0))
        block, offset = ends // BLOCK, ends % BLOCK  # (N,), (N,)
        part = weights[rows, block] * (
            torch.arange(BLOCK, device=items.device) < offset.unsqueeze(1)
        ).unsqueeze(1)  # (N, K, S): the slots of the target's block before it
        sums = earlier_blocks[rows, block] + torch.bmm(part, values[rows, block])  # (N, K, D+1)
        totals = sums[..., -1] + torch.exp(null - top)[rows]  # (N, K), + the null slot
        pooled_negatives = sums[..., :-1] / totals.clamp_min(1e-30).unsqueeze(2)  # (N, K, D)

        pooled = torch.cat([pooled_target, pooled_negatives], dim=1)  # (N, 1 + K, D)
        candidates = torch.cat([target, negatives.expand(len(rows), -1)], dim=1)
        return self._head(pooled, None if side is None else side[rows, ends], candidates)

    def item_scorer(self, batch: Batch) -> Callable[[torch.Tensor | None], torch.Tensor]:
        """Scores for the newest slot of each window (see :meth:`RecModel.item_scorer`): the
        history's keys and values are built once, each call attends with its candidates;
        every item (None) in chunks of ``ITEM_CHUNK``."""
        tokens, known, side = self._inputs(batch)
        known[:, -1] = False  # the predicted slot is no history (its item is [MASK] anyway)
        memory, at_end = self._memory(tokens, known), None if side is None else side[:, -1]

        def candidates(items: torch.Tensor | range) -> torch.Tensor:
            if isinstance(items, range):  # a chunk of ranking's
                items = torch.arange(items.start, items.stop, device=batch.item.device)
            if items.dim() == 1 and len(items) > ITEM_CHUNK:  # attention per candidate: small
                return torch.cat([candidates(part) for part in items.split(ITEM_CHUNK)], dim=1)
            return self._head(self._pool(memory, items, batch), at_end, items)

        def score(items: torch.Tensor | None) -> torch.Tensor:
            if items is not None:
                return candidates(items)
            scores = candidates(torch.arange(self.num_items, device=batch.item.device))
            scores[:, :N_RESERVED] = float("-inf")
            return scores

        return score

    def _inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Item tokens (B, L, D), which slots hold a known item (B, L), and the side inputs
        of each position (B, L, side width) or None."""
        items = batch.item
        side = self.side_inputs(batch)
        return (
            self.item_tokens(items, batch),
            (items != PAD) & (items != MASK),
            torch.cat(side, dim=-1) if side else None,
        )

    def _memory(
        self, tokens: torch.Tensor, visible: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys, values and attention mask of N histories: item tokens (N, L, D) of which
        ``visible`` (N, L), or (N, C, L) when candidates see different slots, are attended;
        a null slot first (learned key, zero value), always visible. Built once, attended
        by every chunk of candidates."""
        count, dim = tokens.shape[0], tokens.shape[-1]
        keys = torch.cat([self.null_key.expand(count, 1, dim), tokens], dim=1)  # (N, 1+L, D)
        values = F.pad(tokens, (0, 0, 1, 0))  # the null slot carries nothing
        if visible.dim() == 2:
            visible = visible.unsqueeze(1)  # (N, 1, L)
        return keys, values, F.pad(visible, (1, 0), value=True)  # mask (N, 1 or C, 1+L)

    def _pool(
        self,
        memory: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        candidates: torch.Tensor,
        batch: Batch,
    ) -> torch.Tensor:
        """The history pooled by attention with each candidate as the query: (N, C, D)."""
        keys, values, visible = memory
        query = self.query(self.item_tokens(candidates, batch)).expand(keys.shape[0], -1, -1)
        return F.scaled_dot_product_attention(query, keys, values, attn_mask=visible)

    def _head(
        self, pooled: torch.Tensor, side: torch.Tensor | None, candidates: torch.Tensor
    ) -> torch.Tensor:
        """The MLP over pooled histories (N, C, D) and side inputs (N, S), compared with the
        candidates' (C,) or (N, C) embeddings: scores (N, C)."""
        hidden = self.pooled_in(pooled)  # (N, C, D)
        if self.side_in is not None and side is not None:
            hidden = hidden + self.side_in(side).unsqueeze(1)
        out = self.mlp_out(hidden)  # (N, C, D)
        weights = self.item_embedding(candidates).expand(pooled.shape[0], -1, -1)  # (N, C, D)
        return (out * weights).sum(-1) + self.output_bias[candidates]  # (N, C)

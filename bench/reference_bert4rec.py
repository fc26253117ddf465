"""A minimal plain-PyTorch BERT4Rec: the reference featrec's training step is compared with.

Written the way most BERT4Rec ports are: every sequence padded to max_len,
``nn.TransformerEncoder``, masking in a Python loop over the batch, and the output
projection computed at every position before the loss picks the masked ones.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

PAD, MASK = 0, 1


class PlainBERT4Rec(nn.Module):
    def __init__(
        self, num_items: int, dim: int, layers: int, heads: int, max_len: int, dropout: float
    ):
        super().__init__()
        self.items = nn.Embedding(num_items, dim, padding_idx=PAD)
        self.positions = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, "gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, num_items)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.dropout(self.norm(self.items(tokens) + self.positions(positions)))
        x = self.encoder(x, src_key_padding_mask=tokens == PAD)
        return self.out(x)  # (B, L, I): scores at every position


def plain_batch(sequences: list[list[int]], max_len: int, mask_prob: float, rng: random.Random):
    """Pad to max_len on the left and mask items one example at a time."""
    tokens, labels = [], []
    for sequence in sequences:
        sequence = sequence[-max_len:]
        masked, label = [], []
        for item in sequence:
            if rng.random() < mask_prob:
                masked.append(MASK)
                label.append(item)
            else:
                masked.append(item)
                label.append(PAD)
        padding = [PAD] * (max_len - len(sequence))
        tokens.append(padding + masked)
        labels.append(padding + label)
    return torch.tensor(tokens), torch.tensor(labels)


def plain_step(
    model: PlainBERT4Rec, optimizer, tokens: torch.Tensor, labels: torch.Tensor
) -> float:
    logits = model(tokens)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=PAD)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()

"""``featrec synth``: a synthetic data set of any size with planted structure (docs/synth.md).

The process, per user (every random draw from one seed):

- Items are split into ``clusters`` of near-equal size; within a cluster, items have Zipf
  popularity (rank r drawn with weight 1 / (r + 1)). A few leftover items (``items`` mod
  ``clusters``) are never drawn: cold items in the catalog.
- Each item has a ``category`` attribute: its cluster with probability 0.8, else a random
  cluster (noisy, as real attributes are).
- Each user has a ``segment`` (one of ``SEGMENTS``) whose preferred clusters are those
  numbered segment, segment + SEGMENTS, ...; the ``segment`` attribute is the true segment
  with probability 0.9.
- The first event's cluster is a preferred cluster of the segment. Each next event's
  cluster: the same cluster with probability ``STAY``; the cluster after it with ``MOVE``,
  along a daytime order (hours 8-19 UTC of the next event) or another, night-time order;
  else a preferred cluster of the segment. The item is drawn by popularity within the
  cluster.
- Events are hours to days apart (exponential gaps), so the hour of the request decides
  which order applies: a request-time feature the model can only use at the predicted slot.

A model that learns the transitions (from ids or attributes), the hour effect and the segment
can approach the ceiling: the oracle that knows the process and ranks items by their true
probability of being next, measured with the evaluation's protocol (leave-one-out, seen
items excluded, ties against the target) on the written data.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from featrec.atomic import write_folder
from featrec.errors import FeatrecError
from featrec.formulas import per_user_metric

log = logging.getLogger(__name__)

SEGMENTS = 8
STAY, MOVE = 0.5, 0.4  # the rest (0.1): a jump to a preferred cluster of the segment
CATEGORY_NOISE, SEGMENT_NOISE = 0.2, 0.1
DAY_HOURS = (8, 20)  # [8, 20) UTC: the daytime order
MEAN_GAP_S = 1.5 * 86_400
START = 1_577_836_800  # 2020-01-01 UTC
MIN_EVENTS = 3  # leave-one-out needs a training, a validation and a test event per user
SPEC = """\
# Written by `featrec synth` ({args}). What is planted and the ceiling: README.md here.
name: synth
data:
  interactions: interactions.parquet
  users: users.parquet
  items: items.parquet
  columns: {{user: user_id, item: item_id, time: timestamp}}
features:
  - {{name: category, scope: item, type: categorical, column: category}}
  - {{name: segment, scope: user, type: categorical, column: segment}}
  - {{name: time, scope: event, type: time, column: timestamp, parts: [hour], known_at: request}}
fusion: {{method: gate, user: add}}
model: {{dim: 64, layers: 2, heads: 2, max_len: 50, dropout: 0.1}}
train:
  {{loss: sampled_softmax, negatives: 256, batch_size: 256, lr: 1.0e-3,
   epochs: 30, min_epochs: 5, patience: 5, seed: 0}}
eval: {{split: leave_one_out, ks: [1, 5, 10, 20], exclude_seen: true, max_users: 10000}}
"""


@dataclass(frozen=True)
class SynthConfig:
    users: int
    items: int
    events: int
    seed: int = 0
    clusters: int | None = None  # default: from the catalog size

    def resolved_clusters(self) -> int:
        if self.clusters is not None:
            return self.clusters
        return int(min(200, max(SEGMENTS, round(math.sqrt(self.items) / 5))))

    def check(self) -> None:
        """One line naming the argument for any value the process cannot honour."""
        for name in ("users", "items", "events"):
            if getattr(self, name) < 1:
                raise FeatrecError(
                    f"--{name}: expected a positive count; got {getattr(self, name)}"
                )
        if self.clusters is not None and self.clusters < 2:
            raise FeatrecError(f"--clusters: expected at least 2; got {self.clusters}")
        clusters = self.resolved_clusters()
        if self.items < 2 * clusters:
            raise FeatrecError(
                f"--items: expected at least 2 per cluster ({2 * clusters} for {clusters} "
                f"clusters); got {self.items}"
            )
        if self.events < MIN_EVENTS * self.users:
            raise FeatrecError(
                f"--events: expected at least {MIN_EVENTS} per user ({MIN_EVENTS * self.users:,} "
                f"for {self.users:,} users: leave-one-out needs them); got {self.events:,}"
            )
        if self.seed < 0:
            raise FeatrecError(f"--seed: expected a non-negative integer; got {self.seed}")


@dataclass
class Synthetic:
    """The generated tables (as numpy arrays) and what the oracle needs."""

    config: SynthConfig
    user_of_event: np.ndarray  # (E,) user index, events grouped by user, oldest first
    item: np.ndarray  # (E,) item index
    timestamp: np.ndarray  # (E,) unix seconds
    cluster_of_event: np.ndarray  # (E,)
    offsets: np.ndarray  # (U + 1,) each user's events: offsets[u] : offsets[u + 1]
    segment: np.ndarray  # (U,) true segment
    segment_attribute: np.ndarray  # (U,) the noisy attribute written
    cluster_of_item: np.ndarray  # (I,) -1 for the leftover items
    rank_of_item: np.ndarray  # (I,) popularity rank within the cluster, -1 for leftovers
    category: np.ndarray  # (I,) the noisy attribute written
    day_next: np.ndarray  # (C,) the daytime order
    night_next: np.ndarray  # (C,) the night-time order
    zipf: np.ndarray  # (n,) probability of each rank within a cluster


def _derangement(rng: np.random.Generator, n: int) -> np.ndarray:
    """A permutation without fixed points: the cluster after each cluster."""
    while True:
        order = rng.permutation(n)
        if not np.any(order == np.arange(n)):
            return order


def _preferred(rng: np.random.Generator, segment: np.ndarray, clusters: int) -> np.ndarray:
    """A preferred cluster of each segment, uniformly: segment + SEGMENTS k, below clusters."""
    count = (clusters - 1 - segment) // SEGMENTS + 1
    return segment + SEGMENTS * np.floor(rng.random(len(segment)) * count).astype(np.int64)


def generate(config: SynthConfig) -> Synthetic:
    config.check()
    rng = np.random.default_rng(config.seed)
    users, items, clusters = config.users, config.items, config.resolved_clusters()
    size = items // clusters  # ranks drawn per cluster; the remainder stay cold

    placement = rng.permutation(items)  # item placement[k + clusters r] is rank r of cluster k
    cluster_of_item = np.full(items, -1, dtype=np.int64)
    rank_of_item = np.full(items, -1, dtype=np.int64)
    drawn = placement[: size * clusters]
    cluster_of_item[drawn] = np.arange(size * clusters) % clusters
    rank_of_item[drawn] = np.arange(size * clusters) // clusters
    member = drawn.reshape(size, clusters)  # member[r, k]: the item of rank r in cluster k
    zipf = 1.0 / np.arange(1, size + 1)
    zipf /= zipf.sum()
    cdf = np.cumsum(zipf)

    noisy = rng.random(items) < CATEGORY_NOISE
    category = np.where(cluster_of_item >= 0, cluster_of_item, rng.integers(0, clusters, items))
    category[noisy] = rng.integers(0, clusters, int(noisy.sum()))

    segment = rng.integers(0, min(SEGMENTS, clusters), users)
    segment_attribute = segment.copy()
    noisy = rng.random(users) < SEGMENT_NOISE
    segment_attribute[noisy] = rng.integers(0, min(SEGMENTS, clusters), int(noisy.sum()))
    day_next, night_next = _derangement(rng, clusters), _derangement(rng, clusters)

    # lengths: MIN_EVENTS each, the rest spread by exponential weights (a long tail of heavy
    # users), summing to exactly ``events``
    weights = rng.exponential(size=users)
    spread = rng.multinomial(config.events - MIN_EVENTS * users, weights / weights.sum())
    lengths = MIN_EVENTS + spread
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total = int(offsets[-1])
    user_of_event = np.repeat(np.arange(users), lengths)

    firsts = offsets[:-1]
    gaps = rng.exponential(MEAN_GAP_S, total)
    gaps[firsts] = rng.random(users) * 300 * 86_400  # the first event: the user's start
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[firsts] - gaps[firsts], lengths)  # from each user's own 0
    timestamp = START + elapsed.astype(np.int64)
    hour = (timestamp // 3600) % 24
    daytime = (hour >= DAY_HOURS[0]) & (hour < DAY_HOURS[1])

    # clusters step by step, all users at once: users by length, longest first, so those
    # with more than ``step`` events are a prefix
    cluster = np.empty(total, dtype=np.int64)
    by_length = np.argsort(-lengths, kind="stable")
    longer = -lengths[by_length]  # ascending
    cluster[firsts] = _preferred(rng, segment, clusters)
    for step in range(1, int(lengths.max())):
        who = by_length[: np.searchsorted(longer, -step, side="left")]
        at = offsets[who] + step
        previous = cluster[at - 1]
        draw = rng.random(len(who))
        moved = np.where(daytime[at], day_next[previous], night_next[previous])
        jump = _preferred(rng, segment[who], clusters)
        cluster[at] = np.where(draw < STAY, previous, np.where(draw < STAY + MOVE, moved, jump))
    ranks = np.minimum(np.searchsorted(cdf, rng.random(total) * cdf[-1], side="right"), size - 1)
    item = member[ranks, cluster]
    return Synthetic(
        config, user_of_event, item, timestamp, cluster, offsets, segment, segment_attribute,
        cluster_of_item, rank_of_item, category, day_next, night_next, zipf,
    )  # fmt: skip


def _cluster_weights(
    s: Synthetic, users: np.ndarray, previous: np.ndarray, daytime: np.ndarray | None
) -> np.ndarray:
    """(U, C) probability of each cluster being next, given the previous cluster, the true
    segment and whether the request is in the daytime (None: not known, half the hours)."""
    clusters = len(s.day_next)
    weights = np.zeros((len(users), clusters))
    rows = np.arange(len(users))
    weights[rows, previous] += STAY
    if daytime is None:
        day_share = (DAY_HOURS[1] - DAY_HOURS[0]) / 24
        weights[rows, s.day_next[previous]] += MOVE * day_share
        weights[rows, s.night_next[previous]] += MOVE * (1 - day_share)
    else:
        moved = np.where(daytime, s.day_next[previous], s.night_next[previous])
        weights[rows, moved] += MOVE
    segment = s.segment[users]
    preferred = (np.arange(clusters)[None, :] % SEGMENTS) == segment[:, None]
    weights += preferred * ((1 - STAY - MOVE) / preferred.sum(axis=1, keepdims=True))
    return weights


def oracle_ranks(s: Synthetic, know_hour: bool = True, chunk: int = 20_000) -> np.ndarray:
    """(U,) 0-based rank of each user's last event among the items, ranked by their true
    probability of being next; seen items excluded, ties counted against the target."""
    size = len(s.zipf)
    norm = 1.0 / s.zipf[0]  # z_r = 1 / ((r + 1) norm)
    users_all = np.arange(len(s.offsets) - 1)
    ranks = np.empty(len(users_all), dtype=np.int64)
    for start in range(0, len(users_all), chunk):
        users = users_all[start : start + chunk]
        last = s.offsets[users + 1] - 1
        hour = (s.timestamp[last] // 3600) % 24
        daytime = (hour >= DAY_HOURS[0]) & (hour < DAY_HOURS[1]) if know_hour else None
        weights = _cluster_weights(s, users, s.cluster_of_event[last - 1], daytime)
        target = s.item[last]
        p_target = (
            weights[np.arange(len(users)), s.cluster_of_item[target]]
            * s.zipf[s.rank_of_item[target]]
        )
        # items of cluster k at least as likely: ranks r with weights_k / ((r + 1) norm) >= p
        at_least = np.floor(weights / (p_target[:, None] * norm) * (1 + 1e-9))
        count = np.minimum(at_least, size).sum(axis=1).astype(np.int64) - 1  # not the target
        # seen items (distinct, not the target) at least as likely are not candidates
        lengths = last - s.offsets[users]
        row = np.repeat(np.arange(len(users)), lengths)
        event = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        seen = s.item[s.offsets[users][row] + event]
        p_seen = weights[row, s.cluster_of_item[seen]] * s.zipf[s.rank_of_item[seen]]
        likely = (p_seen >= p_target[row] * (1 - 1e-9)) & (seen != target[row])
        pairs = np.unique(row[likely] * len(s.cluster_of_item) + seen[likely])
        count -= np.bincount(pairs // len(s.cluster_of_item), minlength=len(users))
        ranks[start : start + len(users)] = count
    return ranks


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5, 10, 20)) -> dict[str, float]:
    """HR@k and NDCG@k of 0-based ranks, averaged over users."""
    return {
        f"{name}@{k}": float(per_user_metric(ranks, f"{name}@{k}").mean())
        for k in ks
        for name in ("hr", "ndcg")
    }


def _cells(metrics: dict[str, float]) -> str:
    return " | ".join(f"{metrics[m]:.4f}" for m in ("ndcg@10", "hr@10", "ndcg@20", "hr@20"))


def describe(s: Synthetic, ceilings: dict[str, dict[str, float]]) -> str:
    """The README written beside the data: what is planted, and the ceilings."""
    c = s.config
    clusters = len(s.day_next)
    full, no_hour = ceilings["oracle"], ceilings["oracle_without_hour"]
    return f"""# Synthetic data written by `featrec synth`

`featrec synth --users {c.users} --items {c.items} --events {c.events} --seed {c.seed}
--clusters {clusters}`. Train on it with `featrec train spec.yaml` (here).

## What is planted

- {clusters} item clusters of {len(s.zipf):,} items each (Zipf popularity within a cluster,
  weight 1 / (rank + 1)); {int((s.cluster_of_item < 0).sum())} leftover items never occur.
- Item attribute `category`: the item's cluster with probability {1 - CATEGORY_NOISE:.1f}, else
  a random cluster.
- User attribute `segment` (one of {min(SEGMENTS, clusters)}): the user's segment with
  probability {1 - SEGMENT_NOISE:.1f}, else random. A segment prefers clusters segment,
  segment + {SEGMENTS}, ...
- Next cluster: the same with probability {STAY}; the next along one of two orders with
  {MOVE} (a daytime order when the event is in hours {DAY_HOURS[0]}-{DAY_HOURS[1] - 1} UTC,
  another at night); else a preferred cluster of the user's segment. The first event is in a
  preferred cluster. Gaps between events are exponential (mean {MEAN_GAP_S / 86_400:.1f} days).
- {c.events:,} events over {c.users:,} users, at least {MIN_EVENTS} each (exponential
  weights spread the rest: a long tail of heavy users).

## The ceiling

The oracle knows the process and ranks items by their true probability of being next,
measured as featrec evaluates (leave-one-out test event, full ranking, seen items excluded,
ties against the target):

| oracle | NDCG@10 | HR@10 | NDCG@20 | HR@20 |
|---|---|---|---|---|
| knows the request's hour | {_cells(full)} |
| does not know the hour | {_cells(no_hour)} |

A model can only approach the first row with the request-time `time` feature; ids alone
can at best approach the second (the segment is visible in a history's clusters).
"""


BYTES_PER_EVENT = 96  # generating holds ~75 bytes per event (20M events: 1.46 GiB peak)


def _check_memory(config: SynthConfig) -> None:
    """Sizes this machine cannot generate: one line naming --events, before any work."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return
    needed = BYTES_PER_EVENT * config.events + 64 * (config.users + config.items)
    if needed > memory:
        raise FeatrecError(
            f"--events: {config.events:,} events need ~{needed / 2**30:,.1f} GiB of memory to "
            f"generate; this machine has {memory / 2**30:,.1f} GiB"
        )


def write(config: SynthConfig, out: Path, force: bool = False) -> dict:
    """Generate and write ``out``: the three tables as parquet, ``spec.yaml``, ``README.md``
    and ``structure.json``; all or nothing. Returns what ``structure.json`` holds."""
    import time

    import polars as pl

    config.check()
    _check_memory(config)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise FeatrecError(f"{out}: exists and is not empty (--force replaces it)")
        if not (out / "structure.json").is_file():  # --force never deletes anything else
            raise FeatrecError(
                f"{out}: holds files that are no featrec synth data set (no structure.json); "
                "--force replaces only an earlier synth output: choose another folder"
            )
    started = time.perf_counter()
    s = generate(config)
    log.info("generated %s events in %.1f s", f"{len(s.item):,}", time.perf_counter() - started)
    ceilings = {
        "oracle": ranking_metrics(oracle_ranks(s)),
        "oracle_without_hour": ranking_metrics(oracle_ranks(s, know_hour=False)),
    }
    structure = {
        "config": asdict(config) | {"clusters": len(s.day_next)},
        "planted": {
            "segments": min(SEGMENTS, len(s.day_next)), "stay": STAY, "move": MOVE,
            "category_noise": CATEGORY_NOISE, "segment_noise": SEGMENT_NOISE,
            "day_hours_utc": list(DAY_HOURS), "mean_gap_days": MEAN_GAP_S / 86_400,
        },
        "ceilings": ceilings,
    }  # fmt: skip
    args = (
        f"--users {config.users} --items {config.items} --events {config.events} "
        f"--seed {config.seed} --clusters {len(s.day_next)}"
    )

    def fill(folder: Path) -> None:
        pl.DataFrame(
            {"user_id": s.user_of_event + 1, "item_id": s.item + 1, "timestamp": s.timestamp}
        ).write_parquet(folder / "interactions.parquet")
        pl.DataFrame(
            {"user_id": np.arange(1, config.users + 1), "segment": s.segment_attribute}
        ).write_parquet(folder / "users.parquet")
        pl.DataFrame(
            {"item_id": np.arange(1, config.items + 1), "category": s.category}
        ).write_parquet(folder / "items.parquet")
        (folder / "spec.yaml").write_text(SPEC.format(args=args))
        (folder / "README.md").write_text(describe(s, ceilings))
        (folder / "structure.json").write_text(json.dumps(structure, indent=2) + "\n")

    try:
        write_folder(out, fill)
    except OSError as err:  # named by the folder asked for, not the staging one beside it
        raise FeatrecError(f"{out}: cannot write there ({err.strerror or err})") from None
    log.info("wrote %s in %.1f s", out, time.perf_counter() - started)
    return structure

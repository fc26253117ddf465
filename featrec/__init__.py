"""featrec: feature-aware BERT4Rec with honest ablations.

``featrec.load(run_dir)`` gives a trained run's recommender (imported lazily, so the data
commands do not pay for importing torch).
"""

from __future__ import annotations

import os
from typing import Any

# oneDNN, behind some of torch's CPU kernels (GELU here, bf16 matmuls), compiles and caches
# one primitive per input shape, up to 1,024 of them by default. featrec's batches change
# shape at every step (window length, number of masked slots), so that cache never stops
# turning over, and the evicted entries fragment the heap: an ML-100K training process
# grew ~3 MB resident per epoch (heap 145 -> 268 MB in 40 epochs), ML-1M ~15 MB per epoch.
# 64 entries keep it bounded (flat after ~20 epochs, same speed; bench/RESULTS.md).
# oneDNN reads this when it creates its first primitive; a value the user set (under this
# name or the older DNNL_ one) wins.
ONEDNN_CACHE_CAPACITY = "64"
if not {"ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY"} & set(os.environ):
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = ONEDNN_CACHE_CAPACITY

__all__ = ["Recommendation", "Recommender", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from featrec import recommend

        return getattr(recommend, name)
    raise AttributeError(f"module 'featrec' has no attribute {name!r}")

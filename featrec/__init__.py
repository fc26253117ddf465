"""featrec: feature-aware BERT4Rec with honest ablations.

``featrec.fit(spec, interactions=df)`` trains and returns a recommender;
``featrec.load(run_dir)`` gives a trained run's recommender; ``featrec.prepare`` the
encoded, split data; ``featrec.load_spec`` / ``featrec.Spec`` the validated spec. Names are
imported on first use, so the data commands do not pay for importing torch.
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

# public names → the module that defines them (imported on first use)
_PUBLIC = {
    "fit": "featrec.api",
    "prepare": "featrec.api",
    "load": "featrec.recommend",
    "Recommender": "featrec.recommend",
    "Recommendation": "featrec.recommend",
    "load_spec": "featrec.spec",
    "Spec": "featrec.spec",
    "FeatrecError": "featrec.errors",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'featrec' has no attribute {name!r}")

"""featrec: feature-aware BERT4Rec with honest ablations.

``featrec.load(run_dir)`` gives a trained run's recommender (imported lazily, so the data
commands do not pay for importing torch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Recommendation", "Recommender", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from featrec import recommend

        return getattr(recommend, name)
    raise AttributeError(f"module 'featrec' has no attribute {name!r}")

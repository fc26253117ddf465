"""Reserved ids, shared by every id space (the item vocabulary and each feature's values).

    PAD = 0      padding: no event at this position
    MASK = 1     hidden value at a masked / predicted slot (docs/design.md §3)
    OOV = 2      a value not seen (often enough) in the training split
    MISSING = 3  null in the data

Real values start at ``N_RESERVED``. The model and batching import these from here, not
from the encoders, so they need neither polars nor the encoders.
"""

PAD, MASK, OOV, MISSING = 0, 1, 2, 3
N_RESERVED = 4
IGNORE = -100  # label of positions outside the loss (the Hugging Face convention)

"""What an op function is called with: ``fn(ctx, inputs, attrs)``, and the context that hands out output buffers."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np

OpFunction = Callable[["OpContext", List[Optional[np.ndarray]], dict], List[np.ndarray]]


class OpContext:
    """Where an op gets its output buffers.  This default hands out fresh arrays."""

    def __init__(self, num_outputs: int = 1):
        self.num_outputs = num_outputs  # how many outputs the node declares (Split, Dropout need it)

    def output(self, shape, dtype=np.float32, donors: Sequence[int] = ()) -> np.ndarray:
        """An uninitialised buffer for one output.

        ``donors`` lists input positions whose buffer the op could safely write
        into (elementwise ufuncs tolerate that aliasing); the runtime may return
        such an input's buffer when it is dead after this node.
        """
        return np.empty(shape, dtype)

    def replay_with(self, replay: OpFunction) -> None:
        """Offer ``replay``, an op function that repeats this call for inputs of the same shapes and dtypes into
        the same output buffers, with the checks and choices already made (an op with many per-call checks: Conv).
        The engine's replayed runs call it instead of the op (engine/offline.py); other contexts ignore it."""

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

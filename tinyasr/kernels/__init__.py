"""Numba kernels, one family per module, each beside its plain numpy reference.

Kernels take plain float32 arrays and scalars; the Python functions here check arguments,
plan and dispatch (see docs/design.md).  Thread use is set in tinyasr.engine.threads.
"""

from tinyasr.kernels.conv1d import ACTIVATIONS, conv1d, conv1d_reference, output_length
from tinyasr.kernels.epilogue import bias_act, bias_act_reference

__all__ = ["ACTIVATIONS", "bias_act", "bias_act_reference", "conv1d", "conv1d_reference", "output_length"]

"""Write vectors.json: ternary generator test vectors from the numpy reference (tinyasr.format.encodings.ternary).

The file is checked in; tests compare the numpy, Numba and torch generators with it, so a change to
any of them that alters a single bit fails.  Regenerate only for a new generator (a new name).
Run from the repository root: ``python3 tests/data/ternary/regenerate.py``.
"""

import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

from tinyasr.format.encodings.ternary import GENERATOR, layer_key, mix64, ternary_columns, ternary_matrix  # noqa: E402

# (seed, layer_id, out_channels, in_channels, density): small ones written out in docs/ternary.md,
# square layers of the benchmark, a partial last block, the extreme seed / layer_id / in_channels.
LAYERS = [
    (0, 0, 4, 6, 1 / 3),
    (42, 1, 3, 8, 0.5),
    (2**64 - 1, 7, 2, 10, 0.25),
    (1234, 0, 64, 64, 1 / 3),
    (1234, 1, 128, 256, 0.1),
    (99, 3, 32, 1000, 1 / 7),
    (5, 2**32 - 1, 8, 65535, 0.01),
    (2**63, 12, 24, 24, 1.0),
]


def main():
    vectors = {
        "generator": GENERATOR,
        "mix64": [{"input": hex(z), "output": hex(int(mix64(np.array([z], np.uint64))[0]))}
                  for z in (0, 1, 0x9E3779B97F4A7C15, 2**64 - 1, 0x0123456789ABCDEF)],
        "layer_key": [{"seed": s, "layer_id": l, "key": hex(layer_key(s, l))} for s, l, *_ in LAYERS],
        "layers": [],
    }
    for seed, layer_id, out_channels, in_channels, density in LAYERS:
        columns, signs = ternary_columns(seed, layer_id, out_channels, in_channels, density)
        matrix = ternary_matrix(seed, layer_id, out_channels, in_channels, density)
        vectors["layers"].append({
            "seed": seed, "layer_id": layer_id, "out_channels": out_channels, "in_channels": in_channels,
            "density": density, "columns": columns.tolist(), "signs": signs.tolist(),
            "matrix_sha256": hashlib.sha256(matrix.tobytes()).hexdigest(),
        })
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors.json")
    with open(path, "w") as f:
        json.dump(vectors, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()

"""Give a converted digits model the front end's ``pad_seconds``: the silence the runtime adds at both ends.

    python -m recipes.digits.set_pad tinyasr/models/digits.tasr runs/pad02/digits.tasr --seconds 0.2
    python -m recipes.digits.set_pad runs/digits_pad/digits.tasr tinyasr/models/digits.tasr --seconds 0.1 \
        --decoder-from tinyasr/models/digits.tasr      # a retrained model takes the bundled decoder entry

The model was trained on strings with 0-0.5 s of silence around them, and within a batch every short example
was followed by zero-padded frames; a file cut tight to the speech (FSDD's own files) then loses its digit.
Padding in the front end (tinyasr.features.frontend.FrontendConfig.pad_seconds) gives every file and stream
that silence without retraining; ``data.FRONTEND`` carries the same value, so a model trained or fine-tuned by
this recipe sees it in training too.  Writes a copy with the manifest's front end changed, tensors unchanged;
``--decoder-from`` also copies another model's decoder entry (the bundled out-of-vocabulary rule, which the
ONNX export does not carry), ``--oov-threshold`` sets the rule's threshold for this model
(recipes/digits/out_of_box.py measures where it falls).
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

import numpy as np

from tinyasr.decoding.specs import decoder_spec
from tinyasr.features.frontend import FrontendConfig
from tinyasr.format.container import read_model, write_model


def with_pad_seconds(source: str, destination: str, seconds: float, decoder_from: Optional[str] = None,
                     oov_threshold: Optional[float] = None) -> None:
    """Copy the .tasr ``source`` to ``destination`` with frontend.pad_seconds = ``seconds`` (checked as the
    runtime checks it), given ``decoder_from`` that model's decoder entry, and given ``oov_threshold`` that
    out-of-vocabulary threshold in the decoder entry (checked as the runtime checks it).  Dense tensors only,
    as this recipe writes them."""
    with read_model(source) as model_file:
        manifest = {k: v for k, v in model_file.manifest.items() if k not in ("format", "version", "tensors")}
        manifest["frontend"] = FrontendConfig.from_dict({**manifest["frontend"], "pad_seconds": seconds}).to_dict()
        tensors = {name: np.array(model_file.tensor(name)) for name in model_file.tensor_names()}
    if decoder_from:
        with read_model(decoder_from) as model_file:
            manifest["decoder"] = model_file.manifest["decoder"]
    if oov_threshold is not None:
        manifest["decoder"] = decoder_spec({**manifest["decoder"], "oov_threshold": oov_threshold},
                                           destination).to_dict()
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    write_model(destination, manifest, tensors)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a digits .tasr")
    parser.add_argument("destination", help="where to write the copy (may be the source)")
    parser.add_argument("--seconds", type=float, required=True, help="silence at each end, e.g. 0.2")
    parser.add_argument("--decoder-from", default=None, help="a .tasr whose decoder entry the copy takes")
    parser.add_argument("--oov-threshold", type=float, default=None,
                        help="the decoder entry's out-of-vocabulary threshold (coverage under it is flagged)")
    args = parser.parse_args(argv)
    with_pad_seconds(args.source, args.destination, args.seconds, args.decoder_from, args.oov_threshold)
    print(f"{args.destination}: frontend pad_seconds = {args.seconds}")


if __name__ == "__main__":
    main()

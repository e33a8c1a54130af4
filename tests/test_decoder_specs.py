"""Decoder specs: the one reader of a manifest's decoder entry; strict checks that name the key, round trips,
the defaults of files written before the specs, and every entry the converter writes."""

from __future__ import annotations

import glob
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

import tinyasr
from tinyasr.decoding.specs import (
    DECODER_SPECS,
    ClassificationSpec,
    CTCSpec,
    FrameClassificationSpec,
    decoder_spec,
    vocabulary_type_of,
)
from tinyasr.errors import ModelFileError, TinyASRError
from tinyasr.features.frontend import FrontendConfig
from tinyasr.format.container import read_model, write_model
from tinyasr.format.graph import Graph, Node, ValueInfo
from tinyasr.cli.info import summarize
from _paths import SHARED_DIR

CTC = {"type": "ctc", "output": "logprobs", "blank": 3, "vocabulary": ["a", "b", " "]}
CLIP = {"type": "classification", "output": "logits", "labels": ["yes", "no"]}
FRAMES = {"type": "frame_classification", "output": "frame_logits", "labels": ["silence", "speech"],
          "sample_rate": 16000, "frame_seconds": 0.02}
LAYER = {"w": "lstm.w", "r": "lstm.r", "bias": "lstm.b"}
JOINT = {"encoder_weight": "j.ew", "encoder_bias": "j.eb", "prediction_weight": "j.pw", "prediction_bias": "j.pb",
         "output_weight": "j.ow", "output_bias": "j.ob", "activation": "relu"}
TRANSDUCER = {"type": "transducer", "output": "outputs", "lengths": "encoded_lengths", "blank": 3,
              "vocabulary": ["a", "b", " "], "prediction": {"embedding": "emb", "layers": [LAYER]}, "joint": JOINT,
              "max_symbols": 5, "durations": [0, 1, 2],
              "ctc": dict(CTC, logits="log_probs", vocabulary_type="chars")}  # a hybrid's CTC head, defaults written
ENTRIES = {"ctc": CTC, "classification": CLIP, "frame_classification": FRAMES,  # one per DECODER_SPECS row
           "transducer": TRANSDUCER}


def test_every_decoder_type_has_a_spec_a_recognizer_call_a_command_and_a_converter_name():
    from tinyasr.cli.main import DECODER_COMMAND
    from tinyasr.pipeline.recognizer import DECODER_CALLS

    assert set(DECODER_SPECS) == set(ENTRIES) == set(DECODER_CALLS) == set(DECODER_COMMAND)
    assert all(spec.type == name for name, spec in DECODER_SPECS.items())
    convert = pytest.importorskip("tinyasr_convert")
    assert convert.DECODER_TYPES == tuple(DECODER_SPECS)


# ---------------------------------------------------------------------------
# round trips and defaults


@pytest.mark.parametrize("kind", sorted(DECODER_SPECS))
def test_from_dict_and_to_dict_are_inverse(kind):
    spec = decoder_spec(ENTRIES[kind], "m.tasr")
    assert type(spec) is DECODER_SPECS[kind]
    written = spec.to_dict()
    assert {k: v for k, v in written.items() if k in ENTRIES[kind]} == ENTRIES[kind]  # what was given, unchanged
    assert decoder_spec(written, "m.tasr") == spec and decoder_spec(written, "m.tasr").to_dict() == written
    assert all(isinstance(v, (str, int, float, list, dict)) for v in written.values())  # JSON: lists not tuples
    assert json.loads(json.dumps(written)) == written
    with pytest.raises(Exception):  # frozen: a shared model's settings cannot change under another thread
        spec.output = "other"


@pytest.mark.parametrize("entry, defaults", [
    # the defaults the Recognizer and the online stream applied before the specs existed, key by key
    (CTC, {"logits": "log_probs", "vocabulary_type": "chars", "frame_seconds": None, "sample_rate": None}),
    (CLIP, {"logits": "logits", "frame_seconds": None, "sample_rate": None}),
    (dict(FRAMES, sample_rate=None, frame_seconds=None), {"logits": "logits", "frame_seconds": None,
                                                          "sample_rate": None}),
])
def test_defaults_of_entries_that_leave_keys_out(entry, defaults):
    spec = decoder_spec(entry, "m.tasr")
    assert {key: getattr(spec, key) for key in defaults} == defaults
    assert "frame_seconds" not in spec.to_dict() and "sample_rate" not in spec.to_dict()  # None is not written


def test_settings_are_tuples_and_a_blank_may_be_listed_or_left_out():
    listed = decoder_spec(dict(CTC, vocabulary=["<b>", "a"], blank=0), "m")
    assert listed.vocabulary == ("<b>", "a") and listed.fits(2) and listed.fits(3) and not listed.fits(4)
    last = decoder_spec(dict(CTC, vocabulary=["a", "b"], blank=2), "m")  # NeMo: blank after the vocabulary
    assert last.fits(3) and not last.fits(2)  # the blank's class must exist
    clip = decoder_spec(CLIP, "m")
    assert clip.fits(2) and not clip.fits(3) and clip.classes == ("yes", "no")


@pytest.mark.parametrize("vocabulary, expected", [
    (["a", "b", " ", "'"], "chars"),
    (["\u2581the", "re", "s"], "subword"),
    (["the", "ca", "##t"], "subword"),
    (["yes", "no"], "words"),
])
def test_vocabulary_type_of_a_token_list(vocabulary, expected):
    assert vocabulary_type_of(vocabulary) == expected


# ---------------------------------------------------------------------------
# malformed entries: one clear ModelFileError naming the key, never a TypeError


@pytest.mark.parametrize("entry, message", [
    ([CTC], "the decoder entry must be an object, got list"),
    ({"output": "y"}, "'type' must be one of ctc, classification, frame_classification, transducer, got None"),
    (dict(CTC, type=["ctc"]), r"'type' must be one of .*, got \['ctc'\]"),
    (dict(CTC, type={"name": "ctc"}), r"'type' must be one of .*, got \{'name': 'ctc'\}"),
    (dict(CTC, type="rnnt"), "type 'rnnt' is unknown to this tinyasr .*; the file may need a newer tinyasr"),
    (dict(TRANSDUCER, blank=9), r"'blank' must be from 0 to 3 \(a class of the 3 vocabulary entries.*got 9"),
    (dict(TRANSDUCER, durations=[0, 1.5]), r"'durations' must be a list of 1 to 64 integers from 0 to 1024"),
    (dict(TRANSDUCER, durations=[0, 0]), r"'durations' must be .*one of them > 0, got \[0, 0\]"),
    (dict(TRANSDUCER, max_symbols=0), "'max_symbols' must be an integer from 1 to 1000, got 0"),
    (dict(TRANSDUCER, prediction={"embedding": 3, "layers": [LAYER]}), "'prediction.embedding' must be a tensor "
                                                                        "name .*, got 3"),
    (dict(TRANSDUCER, prediction={"embedding": "emb", "layers": []}), "'prediction.layers' must be a list of 1 to "
                                                                      "16 objects"),
    (dict(TRANSDUCER, prediction={"embedding": "emb", "layers": [dict(LAYER, r=None)]}),
     r"'prediction.layers\[0\].r' must be a tensor name"),
    (dict(TRANSDUCER, prediction={"embedding": "emb", "layers": [dict(LAYER, peephole="p")]}),
     r"'prediction.layers\[0\]' has unknown key\(s\) \['peephole'\]"),
    (dict(TRANSDUCER, joint=dict(JOINT, activation="gelu")), "'joint.activation' must be one of relu, tanh, sigmoid"),
    (dict(TRANSDUCER, joint={"encoder_weight": "j.ew"}), r"'joint' has unknown key\(s\) \[\] and lacks "
                                                         r"\['encoder_bias'"),
    (dict(TRANSDUCER, ctc=dict(CTC, blank=7)), r"'ctc': the ctc decoder entry: 'blank' must be from 0 to 3"),
    (dict(CTC, beam_size=4), r"the ctc decoder entry has unknown key\(s\) 'beam_size'; its keys are type, output"),
    (dict(CLIP, blank=0), r"the classification decoder entry has unknown key\(s\) 'blank'"),
    (dict(CLIP, vocabulary=["a"]), r"unknown key\(s\) 'vocabulary'"),
    ({"type": "ctc", "output": "y"}, "the ctc decoder entry lacks 'blank', 'vocabulary'"),
    ({"type": "frame_classification", "labels": ["a"]}, "the frame_classification decoder entry lacks 'output'"),
    (dict(CTC, output=["logprobs"]), r"'output' must be a string \(an output name\), got \['logprobs'\]"),
    (dict(CTC, output=""), "'output' must be a string"),
    (dict(CTC, blank="3"), "'blank' must be an integer, got '3'"),
    (dict(CTC, blank=True), "'blank' must be an integer, got True"),
    (dict(CTC, blank=2.0), "'blank' must be an integer, got 2.0"),
    (dict(CTC, blank=4), r"'blank' must be from 0 to 3 \(a class of the 3 vocabulary entries.*got 4"),
    (dict(CTC, blank=-1), "'blank' must be from 0 to 3.*got -1"),
    (dict(CTC, vocabulary="abc"), "'vocabulary' must be a list of strings, got 'abc'"),
    (dict(CTC, vocabulary=[1, 2]), r"'vocabulary' must be a list of strings, got \[1, 2\]"),
    (dict(CTC, vocabulary=[]), r"'vocabulary' must be a list of strings, got \[\]"),
    (dict(CTC, vocabulary=None), "'vocabulary' must be a list of strings, got None"),
    (dict(CLIP, labels={"yes": 0}), "'labels' must be a list of strings"),
    (dict(CTC, vocabulary_type="bytes"), "'vocabulary_type' must be one of chars, subword, words, got 'bytes'"),
    (dict(CTC, logits="softmax"), "'logits' must be one of log_probs, logits, probs, got 'softmax'"),
    (dict(CLIP, logits=None), "'logits' must be one of .*got None"),  # null is not "use the default"
    (dict(CLIP, logits=["logits"]), r"'logits' must be one of .*got \['logits'\]"),
    (dict(FRAMES, frame_seconds=0), "'frame_seconds' must be a number of seconds from 1e-06 to 86400, got 0"),
    (dict(FRAMES, frame_seconds=-0.02), "'frame_seconds' must be a number of seconds from 1e-06 to 86400, got -0.02"),
    (dict(FRAMES, frame_seconds=math.inf), "'frame_seconds' must be a number of seconds from 1e-06 to 86400, got inf"),
    (dict(FRAMES, frame_seconds=math.nan), "'frame_seconds' must be a number of seconds from 1e-06 to 86400, got nan"),
    (dict(FRAMES, frame_seconds="0.02"), "'frame_seconds' must be a number of seconds from 1e-06 to 86400, got '0.02'"),
    (dict(FRAMES, frame_seconds=True), "'frame_seconds' must be a number of seconds from 1e-06 to 86400, got True"),
    (dict(FRAMES, frame_seconds=5e-324), "'frame_seconds' must be a number of seconds from 1e-06 to 86400, got 5e-324"),
    (dict(FRAMES, frame_seconds=10**400), "'frame_seconds' must be a number of seconds from 1e-06 to 86400, got 1000"),
    (dict(FRAMES, sample_rate=16000.0), r"'sample_rate' must be an integer from 1000 to 768000 \(Hz\), got 16000.0"),
    (dict(FRAMES, sample_rate=0), "'sample_rate' must be an integer from 1000 to 768000"),
    (dict(FRAMES, sample_rate="16k"), "'sample_rate' must be an integer from 1000 to 768000"),
])
def test_malformed_entries_are_refused_naming_the_key(entry, message):
    with pytest.raises(ModelFileError, match=f"^m.tasr: .*{message}"):
        decoder_spec(entry, "m.tasr")


def test_a_spec_refuses_an_entry_of_another_type_and_bad_values_in_python():
    with pytest.raises(ModelFileError, match="a ctc decoder entry has 'type' 'classification'"):
        CTCSpec.from_dict(CLIP, "m")
    with pytest.raises(TinyASRError, match="the ctc decoder entry: 'blank' must be from 0 to 1"):
        CTCSpec(output="y", blank=5, vocabulary=["a"])  # the converter builds specs: checked there too
    assert decoder_spec(None, "m") is None


# ---------------------------------------------------------------------------
# where entries come from: the bundled model, the converter, and the raw-audio rate


def test_the_bundled_model_decoder_parses_and_writes_back_unchanged():
    path = os.path.join(os.path.dirname(tinyasr.__file__), "models", "digits.tasr")
    with read_model(path) as model_file:
        stored = model_file.manifest["decoder"]
    spec = decoder_spec(stored, path)
    assert isinstance(spec, CTCSpec) and spec.vocabulary_type == "words" and spec.blank == 10
    assert spec.to_dict() == stored


def _converted_decoders(tmp_path):
    """The decoder entries the converter writes for the cases of tests/test_convert_onnx.py and test_recognizer.py."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from tinyasr_convert import convert

    def onnx_model(last_op, out_shape, classes, metadata=None):
        w = numpy_helper.from_array(np.ones((classes, 8, 1), np.float32), "w")
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"])]
        if len(out_shape) == 3:
            nodes.append(helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 1]))
        else:
            nodes.append(helper.make_node("ReduceMean", ["c"], ["t"], axes=[2], keepdims=0))
        nodes.append(helper.make_node(last_op, ["t"], ["y"], axis=-1) if last_op else
                     helper.make_node("Identity", ["t"], ["y"]))
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8, "T"])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], [w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        for k, v in (metadata or {}).items():
            model.metadata_props.add(key=k, value=v)
        return model

    cases = {
        "chars": (onnx_model("LogSoftmax", ["B", "T", 5], 5), dict(labels=list("abcd"))),
        "subword": (onnx_model("LogSoftmax", ["B", "T", 5], 5), dict(labels=["\u2581a", "b", "c", "d"], blank=0)),
        "words": (onnx_model("Softmax", ["B", "T", 3], 3), dict(labels=["yes", "no"], decoder="ctc")),
        "clip": (onnx_model(None, ["B", 3], 3), dict(labels=["up", "down", "left"])),
        "frames": (onnx_model("Softmax", ["B", "T", 2], 2),
                   dict(decoder=dict(FRAMES, output="y", logits="probs"))),
    }
    written = {}
    for name, (model, options) in cases.items():
        with read_model(convert(model, tmp_path / f"{name}.tasr", **options)) as model_file:
            written[name] = model_file.manifest["decoder"]
    return written


def test_every_decoder_the_converter_writes_parses_to_what_was_written(tmp_path):
    written = _converted_decoders(tmp_path)
    for name, entry in written.items():
        assert decoder_spec(entry, name).to_dict() == entry, name
    assert written["chars"] == {"type": "ctc", "output": "y", "blank": 4, "vocabulary": list("abcd"),
                                "vocabulary_type": "chars", "logits": "log_probs"}
    assert written["subword"]["vocabulary_type"] == "subword" and written["subword"]["blank"] == 0
    assert written["words"]["vocabulary_type"] == "words" and written["words"]["logits"] == "probs"
    assert written["clip"] == {"type": "classification", "output": "y", "labels": ["up", "down", "left"],
                               "logits": "logits"}
    assert written["frames"] == dict(FRAMES, output="y", logits="probs")


NEMO = SHARED_DIR / "models" / "nemo-random"


@pytest.mark.skipif(not NEMO.is_dir(), reason=f"shared NeMo models not available ({NEMO})")
def test_every_nemo_config_decoder_parses_to_what_the_converter_writes():
    pytest.importorskip("yaml")
    from tinyasr.errors import ConversionError
    from tinyasr_convert.nemo import load_config, manifest_from_nemo_config

    kinds = []
    for config in sorted(glob.glob(str(NEMO / "*" / "model_config.yaml"))):
        try:
            entry = manifest_from_nemo_config(load_config(config))["decoder"]
        except ConversionError as exc:
            assert "RNNTDecoder" in str(exc), exc  # transducers are not converted yet (issue 15)
            continue
        assert decoder_spec(entry, config).to_dict() == entry, config
        kinds.append(entry["type"])
    assert {"ctc", "classification"} <= set(kinds)


def test_info_shows_the_defaults_and_the_problem_of_an_entry_it_would_refuse(tmp_path):
    graph = Graph([ValueInfo("x", "float32", ("T", 3))], [ValueInfo("y", "float32", ("T", 3))],
                  [Node("relu", "Relu", ("x",), ("y",))])
    for name, entry in (("good", {"type": "ctc", "output": "y", "blank": 2, "vocabulary": ["a", "b"]}),
                        ("bad", {"type": "ctc", "output": "y", "blank": 7, "vocabulary": ["a", "b"]})):
        write_model(tmp_path / f"{name}.tasr", {"graph": graph.to_dict(), "frontend": None, "decoder": entry,
                                                 "provenance": {}}, {})
    good = summarize(tmp_path / "good.tasr")["decoder"]
    assert good["logits"] == "log_probs" and good["vocabulary_type"] == "chars" and "problem" not in good
    bad = summarize(tmp_path / "bad.tasr")["decoder"]
    assert bad["blank"] == 7 and "logits" not in bad and "'blank' must be from 0 to 2" in bad["problem"]


@pytest.mark.parametrize("manifest_rate, decoder_rate, default, expected", [
    (None, 8000, None, 8000),
    (22050, 8000, None, 22050),  # the manifest's top-level key wins, as before the specs
    (None, None, 16000, 16000),  # the MarbleNet VAD's default
    (None, None, None, "gives no 'sample_rate'"),
    (2**40, None, None, "'sample_rate' must be an integer from 1 to 768000"),
    (16000.5, None, None, "'sample_rate' must be an integer"),
])
def test_the_raw_audio_rate_is_read_in_one_place(manifest_rate, decoder_rate, default, expected):
    from tinyasr.pipeline.model_input import sample_rate_of

    model = SimpleNamespace(manifest={} if manifest_rate is None else {"sample_rate": manifest_rate})
    decoder = FrameClassificationSpec(output="y", labels=["a"], sample_rate=decoder_rate)
    signal = ValueInfo("audio", "int16", (1, 1, "N"))
    if isinstance(expected, int):
        assert sample_rate_of(model, None, decoder, signal, "m.tasr", default=default) == expected
        assert sample_rate_of(model, FrontendConfig(sample_rate=11025), decoder, signal, "m.tasr") == 11025
    else:
        with pytest.raises(ModelFileError, match=f"m.tasr: .*{expected}"):
            sample_rate_of(model, None, decoder, signal, "m.tasr", default=default)


def test_classification_specs_are_distinct_types():
    frames = decoder_spec(FRAMES, "m")
    assert isinstance(frames, FrameClassificationSpec) and frames.type == "frame_classification"
    assert type(decoder_spec(CLIP, "m")) is ClassificationSpec

"""The offline schedule runs the nodes whose outputs depend on the input shapes alone once per input-shape
signature (tinyasr/engine/planner.signature_values) and keeps their outputs: later runs must give what a
fresh model gives, and a value whose shape depends on input *values* must never be kept."""

from __future__ import annotations

import numpy as np

from tinyasr.engine.offline import Model
from tinyasr.engine.planner import signature_values
from tinyasr.format.graph import Graph, Node, ValueInfo

NODES = [
    # shape arithmetic on x: [B, T] -> the shape [T, B] (kept)
    Node("shape", "Shape", ("x",), ("s",)),
    Node("t", "Gather", ("s", "one"), ("t_scalar",), {"axis": 0}),
    Node("b", "Gather", ("s", "zero"), ("b_scalar",), {"axis": 0}),
    Node("t1", "Unsqueeze", ("t_scalar", "axes0"), ("t_vec",)),
    Node("b1", "Unsqueeze", ("b_scalar", "axes0"), ("b_vec",)),
    Node("cat", "Concat", ("t_vec", "b_vec"), ("tb",), {"axis": 0}),
    Node("flip", "Reshape", ("x", "tb"), ("y",)),
    # a tensor whose shape comes from the *value* of n: its Shape is not signature-determined (not kept)
    Node("range", "Range", ("zero_scalar", "n", "one_scalar"), ("r",)),
    Node("range_shape", "Shape", ("r",), ("r_shape",)),
    # the value of n itself (not kept)
    Node("twice", "Add", ("n", "n"), ("n2",)),
]
CONSTANTS = {"one": np.array(1, np.int64), "zero": np.array(0, np.int64), "axes0": np.array([0], np.int64),
             "zero_scalar": np.array(0, np.int64), "one_scalar": np.array(1, np.int64)}
GRAPH = Graph([ValueInfo("x", "float32", ["B", "T"]), ValueInfo("n", "int64", [])],
              [ValueInfo("y", "float32", ["T", "B"]), ValueInfo("r_shape", "int64", [1]),
               ValueInfo("n2", "int64", [])], NODES)


def test_only_shape_arithmetic_is_signature_determined():
    chosen = {NODES[i].name for i in signature_values(["x", "n"], NODES, CONSTANTS)}
    assert chosen == {"shape", "t", "b", "t1", "b1", "cat"}


def test_kept_values_give_what_a_fresh_model_gives():
    model = Model(GRAPH, CONSTANTS)
    for n in (3, 5, 3, 7):  # same signature (x's shape, n a scalar): the Range shape must still follow n
        x = np.arange(6, dtype=np.float32).reshape(2, 3) + n
        got = model.run({"x": x, "n": np.array(n, np.int64)})
        fresh = Model(GRAPH, CONSTANTS).run({"x": x, "n": np.array(n, np.int64)})
        for key in fresh:
            np.testing.assert_array_equal(got[key], fresh[key])
        np.testing.assert_array_equal(got["y"], x.reshape(3, 2))
        assert got["r_shape"].tolist() == [n] and int(got["n2"]) == 2 * n
    x = np.zeros((4, 1), np.float32)  # a new signature plans and keeps its own values
    assert model.run({"x": x, "n": np.array(2, np.int64)})["y"].shape == (1, 4)
    assert model.run({"x": x, "n": np.array(2, np.int64)})["y"].shape == (1, 4)


def test_every_registered_op_has_a_shape_rule():
    """A new op must say how its output shape comes about (tinyasr/ops/shape_rules.py); until it does, its
    outputs are never kept (safe, but the shape arithmetic around it then runs every time)."""
    from tinyasr.ops import SUPPORTED_OPS
    from tinyasr.ops.shape_rules import SHAPES_FROM_SHAPES, SHAPES_FROM_VALUES

    assert not SHAPES_FROM_SHAPES & set(SHAPES_FROM_VALUES)
    missing = sorted(set(SUPPORTED_OPS) - SHAPES_FROM_SHAPES - set(SHAPES_FROM_VALUES))
    assert not missing, f"ops without a shape rule in tinyasr/ops/shape_rules.py: {missing}"


# A mask from the lengths between two steps on the signal, and a step on the lengths alone after both
LIGHT_NODES = [
    Node("relu", "Relu", ("x",), ("a",)),
    Node("shape", "Shape", ("x",), ("s",)),
    Node("t", "Gather", ("s", "two"), ("t_scalar",), {"axis": 0}),
    Node("range", "Range", ("zero_scalar", "t_scalar", "one_scalar"), ("frames",)),
    Node("row", "Unsqueeze", ("frames", "axes0"), ("frames_row",)),
    Node("twice", "Add", ("lengths", "lengths"), ("twice_lengths",)),
    Node("column", "Unsqueeze", ("twice_lengths", "axes1"), ("limits",)),
    Node("less", "Less", ("frames_row", "limits"), ("mask",)),
    Node("mask3", "Unsqueeze", ("mask", "axes1"), ("mask_bct",)),
    Node("cast", "Cast", ("mask_bct",), ("mask_f",), {"to": 1}),
    Node("masked", "Mul", ("a", "mask_f"), ("b",)),
    Node("relu2", "Relu", ("b",), ("c",)),
    Node("residual", "Add", ("c", "x"), ("y",)),
    Node("thrice", "Mul", ("lengths", "three"), ("out_lengths",)),
]
LIGHT_CONSTANTS = {"two": np.array(2, np.int64), "zero_scalar": np.array(0, np.int64),
                   "one_scalar": np.array(1, np.int64), "axes0": np.array([0], np.int64),
                   "axes1": np.array([1], np.int64), "three": np.array(3, np.int64)}
LIGHT_GRAPH = Graph([ValueInfo("x", "float32", ["B", "C", "T"]), ValueInfo("lengths", "int64", ["B"])],
                    [ValueInfo("y", "float32", ["B", "C", "T"]), ValueInfo("out_lengths", "int64", ["B"])],
                    LIGHT_NODES)


def test_steps_on_the_lengths_alone_run_first_from_the_second_run_on():
    """From a signature's second run on, the steps that read nothing of the signal (the lengths' arithmetic and
    the mask, the frame range being kept) run before the others (planner.light_first); every run still gives the
    numpy result, with the lengths read by the first and the last node of the graph's order.  A light step whose
    output is over LIGHT_STEP_MAX_BYTES stays in place (a Conformer's [T, T] masks held from the start cost memory)."""
    model = Model(LIGHT_GRAPH, LIGHT_CONSTANTS)
    rng = np.random.default_rng(0)
    for run, lengths in enumerate(([3, 1], [2, 4], [0, 5], [5, 2], [1, 1])):
        x = rng.standard_normal((2, 3, 9)).astype(np.float32)
        lengths = np.array(lengths, np.int64)
        got = model.run({"x": x, "lengths": lengths})
        mask = (np.arange(9)[None, :] < 2 * lengths[:, None]).astype(np.float32)[:, None, :]
        np.testing.assert_array_equal(got["y"], np.maximum(np.maximum(x, 0) * mask, 0) + x)
        np.testing.assert_array_equal(got["out_lengths"], 3 * lengths)
    (pool,) = model._local.plans.values()
    order = [model._steps[index].node.name for index, _, _ in pool.schedule]
    assert order == ["twice", "column", "less", "mask3", "cast", "thrice", "relu", "masked", "relu2", "residual"]
    # a light step whose output is large (the float mask of 2 x 20000 frames, 160 KB) stays in place
    x = rng.standard_normal((2, 1, 20000)).astype(np.float32)
    for _ in range(3):
        got = model.run({"x": x, "lengths": np.array([7000, 30], np.int64)})
    mask = (np.arange(20000)[None, :] < np.array([[14000], [60]])).astype(np.float32)[:, None, :]
    np.testing.assert_array_equal(got["y"], np.maximum(np.maximum(x, 0) * mask, 0) + x)
    pool = model._local.plans[next(reversed(model._local.plans))]
    order = [model._steps[index].node.name for index, _, _ in pool.schedule]
    assert order == ["twice", "column", "less", "mask3", "thrice", "relu", "cast", "masked", "relu2", "residual"]

"""Lookups over one ONNX graph for the structural analyses (qbench.quantize.roles): stable node names,
producers, consumers, constants, initializer sources. The model is never mutated."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

_PASS = {"Identity", "Cast", "Dropout"}                       # ops that carry a value through unchanged
_SHAPE_ONLY = {"Shape", "Size"}                                # read a tensor's shape, not its values
_INDEX_PASS = _PASS | {"Reshape", "Squeeze", "Unsqueeze", "Flatten"}
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}


def stable_names(model: onnx.ModelProto) -> list[str]:
    """One unique name per node, in graph order: its own name, else ``<op_type>_<index>``."""
    nodes = model.graph.node
    taken = {n.name for n in nodes if n.name}
    seen: set[str] = set()
    out = []
    for i, n in enumerate(nodes):
        name = n.name if n.name and n.name not in seen else f"{n.name or n.op_type}_{i}"
        while name in seen or (name != n.name and name in taken):
            name += "_"
        seen.add(name)
        out.append(name)
    return out


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _Graph:
    """Lookups over one graph: producers, consumers, constants, initializer sources."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.nodes = list(g.node)
        self.names = stable_names(model)
        self.inits = {t.name: t for t in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.inits]
        self.outputs = {o.name: o for o in g.output}
        self.producer: dict[str, int] = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, n in enumerate(self.nodes):
            for x in dict.fromkeys(x for x in n.input if x):
                self.consumers[x].append(i)
        self.const = set(self.inits)
        for n in self.nodes:
            ins = [x for x in n.input if x]
            if n.op_type == "Constant" or (ins and n.op_type not in _RANDOM and all(x in self.const for x in ins)):
                self.const.update(o for o in n.output if o)

    def prod(self, t: str) -> onnx.NodeProto | None:
        i = self.producer.get(t)
        return None if i is None else self.nodes[i]

    def readers(self, t: str) -> list[int]:
        """Consumers that read the values (not only the shape) of ``t``."""
        return [i for i in self.consumers.get(t, []) if self.nodes[i].op_type not in _SHAPE_ONLY]

    def sole(self, t: str, op: str, const_other: bool = False) -> int | None:
        """The one value-reader of ``t`` if it has op type ``op`` (and, for binary ops, a constant other input)."""
        r = self.readers(t)
        if len(r) != 1 or self.nodes[r[0]].op_type != op or t in self.outputs:
            return None
        n = self.nodes[r[0]]
        if const_other and not all(x in self.const for x in n.input if x and x != t):
            return None
        return r[0]

    def value(self, t: str) -> np.ndarray | None:
        if t in self.inits:
            return numpy_helper.to_array(self.inits[t])
        n = self.prod(t)
        if n is None:
            return None
        if n.op_type == "Constant":
            for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
                v = _attr(n, key)
                if v is not None:
                    return numpy_helper.to_array(v) if key == "value" else np.array(v)
        if n.op_type in ("Identity", "Cast"):
            return self.value(n.input[0])
        return None

    def init_source(self, t: str) -> tuple[str, bool] | None:
        """The initializer behind ``t`` through Identity/Cast/DequantizeLinear/2-D Transpose; (name, transposed)."""
        flipped = False
        for _ in range(16):
            if t in self.inits:
                return t, flipped
            n = self.prod(t)
            if n is None or n.op_type not in ("Identity", "Cast", "DequantizeLinear", "Transpose"):
                return None
            if n.op_type == "Transpose":
                if list(_attr(n, "perm", [1, 0])) != [1, 0]:
                    return None
                flipped = not flipped
            t = n.input[0]
        return None

    def graph_input_behind(self, t: str) -> str | None:
        for _ in range(16):
            if t in self.inputs:
                return t
            n = self.prod(t)
            if n is None or n.op_type not in _INDEX_PASS:
                return None
            t = n.input[0]
        return None

    def output_last_dim(self, t: str) -> int | None:
        dims = self.outputs[t].type.tensor_type.shape.dim
        return dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None

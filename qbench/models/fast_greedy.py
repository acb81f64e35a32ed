"""Greedy decoding on ONNX Runtime with the cross-attention keys and values computed once per sentence.

``qbench.models.decoder_split`` cuts the decoder into a ``cross`` graph (run once per batch) and a
``step`` graph (run once per token). The loop keeps every per-sentence tensor and the self-attention
past as ONNX Runtime OrtValues bound to the step session (``io_binding``): the present K/V of one
step is bound as the next step's past without a round trip through numpy. Rows that emitted EOS are
dropped from the batch once they are a quarter of it (each row is computed independently of the
others, so the survivors' logits do not change).

The search itself is ``Generator``'s: the same logits processors (``Generator._process``), the same
stopping rule, the same returned sequences, so the ids equal those of ``Generator``'s loop over the
full decoder (``tests/integration/test_seq2seq_export.py`` and ``benchmarks/decode_speed.py`` check it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qbench.models.decoder_split import ROOT, split_decoder
from qbench.models.layout import past_names, present_names

MASK = "encoder_attention_mask"
INTEGER_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat",
               "DynamicQuantizeMatMul", "ConvInteger", "QLinearConv"}


def _session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


class FastGreedy:
    """The cross and step sessions of one decoder graph; ``None`` from ``load`` where it does not split."""

    def __init__(self, split: Any, threads: int, num_layers: int, input_names: list[str],
                 output_names: list[str]) -> None:
        self.split = split
        self.input_names, self.output_names = input_names, output_names  # the whole decoder's
        self.cross = _session(split.cross, threads)
        self.step = _session(split.step, threads)
        self.boundary = list(split.boundary)
        self._past, self._present = past_names(num_layers), present_names(num_layers)
        names = {i.name for i in self.step.get_inputs()}
        self._sentence = [n for n in (ROOT, MASK, *self.boundary) if n in names]
        self._outputs = [o.name for o in self.step.get_outputs()]
        # Finished rows leave the batch only in float graphs. Dynamic quantization (ort_dynamic) takes one scale
        # over the whole batch; and with ONNX Runtime's INT8 kernels on an AVX2 CPU a Q/DQ model's row does not
        # always get the same numbers in a smaller batch (a test sentence of benchmarks/decode_speed.py changed
        # its ids), so integer graphs keep every row, as the whole-graph loop does, and decode to its ids.
        ops = {n.op_type for n in (*split.step.graph.node, *split.cross.graph.node)}
        self.row_independent = not ops & INTEGER_OPS

    @classmethod
    def load(cls, decoder_path: Path, threads: int, num_layers: int) -> "FastGreedy | None":
        """None where the graph does not split (no MatMul reads the encoder states alone), or where its
        interface is not the one ``Generator`` decodes (``Generator`` then says what is missing)."""
        import onnx

        model = onnx.load(str(decoder_path))
        inputs = [i.name for i in model.graph.input]
        outputs = [o.name for o in model.graph.output]
        if any(n not in inputs for n in ("input_ids", MASK, *past_names(num_layers))) or \
                any(n not in outputs for n in ("logits", *present_names(num_layers))):
            return None
        split = split_decoder(model)
        return None if split is None else cls(split, threads, num_layers, inputs, outputs)

    def cross_kv(self, states: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.boundary, self.cross.run(self.boundary, {ROOT: states})))

    def run(self, gen: Any, states: np.ndarray, mask: np.ndarray, max_length: int) -> np.ndarray:
        """Greedy search as ``Generator._greedy``; the [batch, cur_len] sequences (start token included)."""
        from onnxruntime import OrtValue

        spec = gen.spec
        batch = states.shape[0]
        sentence = {ROOT: states, MASK: mask, **self.cross_kv(states)}
        sentence = {k: np.ascontiguousarray(sentence[k]) for k in self._sentence}
        droppable = self.row_independent and all(v.shape[0] == batch for v in sentence.values())
        seqs = np.full((batch, max_length), spec.pad_token_id, dtype=np.int64)
        seqs[:, 0] = spec.decoder_start_token_id
        rows = np.arange(batch)                  # the original row of each row still in the batch
        alive = np.ones(batch, dtype=bool)       # rows in the batch that have not emitted EOS
        head, kv = spec.num_heads, spec.head_dim
        past = [OrtValue.ortvalue_from_numpy(np.zeros((batch, head, 0, kv), np.float32))
                for _ in self._past]
        binding = self.step.io_binding()
        self._bind_sentence(binding, sentence)
        logits_at = self._outputs.index("logits")
        present_at = [self._outputs.index(n) for n in self._present]
        last = seqs[:, :1].copy()
        cur = 1
        while True:
            binding.bind_cpu_input("input_ids", last)
            for name, value in zip(self._past, past):
                binding.bind_ortvalue_input(name, value)
            binding.clear_binding_outputs()  # each step's outputs are new OrtValues (they grow by one token)
            for name in self._outputs:
                binding.bind_output(name, "cpu")
            self.step.run_with_iobinding(binding)
            outs = binding.get_outputs()
            logits = outs[logits_at].numpy()[:, -1, :].astype(np.float32)
            past = [outs[i] for i in present_at]
            scores = gen._process(logits, cur, max_length)
            nxt = np.where(alive, scores.argmax(axis=-1), spec.pad_token_id)
            seqs[rows, cur] = nxt
            cur += 1
            alive &= ~np.isin(nxt, gen._eos)
            if not alive.any() or cur >= max_length:
                return seqs[:, :cur]
            finished = int((~alive).sum())
            if droppable and 4 * finished >= len(alive):
                keep = alive
                rows, alive, nxt = rows[keep], alive[keep], nxt[keep]
                past = [OrtValue.ortvalue_from_numpy(np.ascontiguousarray(p.numpy()[keep])) for p in past]
                sentence = {k: np.ascontiguousarray(v[keep]) for k, v in sentence.items()}
                self._bind_sentence(binding, sentence)
            last = nxt[:, None].astype(np.int64)

    def _bind_sentence(self, binding: Any, sentence: dict[str, np.ndarray]) -> None:
        for name, value in sentence.items():
            binding.bind_cpu_input(name, value)


class LazyFastGreedy:
    """A ``FastGreedy`` made at the first greedy decoding; ``run`` returns None (decode with the whole graph)
    where the decoder does not split."""

    def __init__(self, decoder_path: Path, threads: int, num_layers: int) -> None:
        self._args, self._fast, self._loaded = (decoder_path, threads, num_layers), None, False

    def run(self, gen: Any, states: np.ndarray, mask: np.ndarray, max_length: int) -> np.ndarray | None:
        if not self._loaded:
            self._fast, self._loaded = FastGreedy.load(*self._args), True
        return None if self._fast is None else self._fast.run(gen, states, mask, max_length)


def split_logits(decoder_path: Path, states: np.ndarray, mask: np.ndarray, target: np.ndarray,
                 num_layers: int, num_heads: int, head_dim: int, cuts: tuple[int, ...]) -> np.ndarray | None:
    """Logits of ``target`` [batch, tgt_len] through the split graphs, fed in chunks between ``cuts`` with
    the past carried over: what the exporter compares with PyTorch. None where the decoder does not split."""
    fast = FastGreedy.load(decoder_path, 1, num_layers)
    if fast is None:
        return None
    sentence = {ROOT: states, MASK: mask, **fast.cross_kv(states)}
    sentence = {k: sentence[k] for k in fast._sentence}
    past = [np.zeros((len(states), num_heads, 0, head_dim), np.float32) for _ in fast._past]
    chunks = []
    for lo, hi in zip(cuts, cuts[1:]):
        outs = fast.step.run(None, {"input_ids": target[:, lo:hi], **sentence, **dict(zip(fast._past, past))})
        named = dict(zip(fast._outputs, outs))
        chunks.append(named["logits"])
        past = [named[n] for n in fast._present]
    return np.concatenate(chunks, axis=1)

"""The export check of ``qbench.models.seq2seq``: max |ONNX Runtime - PyTorch| of the encoder, of the decoder
(whole target, then incrementally with past) and of the split decoder that greedy decoding runs
(``qbench.models.fast_greedy``), on a random right-padded batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qbench.config.errors import ModelError
from qbench.models.layout import past_names


def check_batch(dims: dict[str, int], facts: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Random source ids (right-padded, lengths 7/4/2), their mask, and a 6-token target."""
    import numpy as np

    rng = np.random.default_rng(0)
    specials = {facts["pad_token_id"], facts["decoder_start_token_id"], *facts["eos_token_ids"]}
    normal = np.setdiff1d(np.arange(dims["vocab_size"]), sorted(specials))
    mask = (np.arange(7)[None, :] < np.array([[7], [4], [2]])).astype(np.int64)
    src = np.where(mask == 1, rng.choice(normal, size=mask.shape), facts["pad_token_id"])
    tgt = rng.choice(normal, size=(3, 6))
    tgt[:, 0] = facts["decoder_start_token_id"]
    return src.astype(np.int64), mask, tgt.astype(np.int64)


def check_diffs(model: Any, out: Path, dims: dict[str, int], facts: dict[str, Any]) -> dict:
    """Max |ONNX Runtime - PyTorch|: the encoder; the decoder on the whole target (past_len 0); and
    the decoder run incrementally (3 tokens, 1, then 2 with past), all against one PyTorch forward."""
    import numpy as np
    import onnxruntime as ort
    import torch

    src, mask, tgt = check_batch(dims, facts)
    ref_states = model.get_encoder()(input_ids=torch.from_numpy(src),
                                     attention_mask=torch.from_numpy(mask)).last_hidden_state
    ref = model(encoder_outputs=(ref_states,), attention_mask=torch.from_numpy(mask),
                decoder_input_ids=torch.from_numpy(tgt), use_cache=True)
    ref_present = [t.numpy() for layer in ref.past_key_values.self_attention_cache.layers
                   for t in (layer.keys, layer.values)]
    states, ref_logits = ref_states.numpy(), ref.logits.numpy()

    def session(name: str) -> Any:
        return ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])

    def diff(pairs: Any) -> float:
        worst = 0.0
        for a, b in pairs:
            if a.shape != b.shape:
                raise ModelError(f"ONNX output shape {a.shape} != PyTorch {b.shape} ({out})")
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))))
        return worst

    names = past_names(dims["num_layers"])
    empty = [np.zeros((3, dims["num_heads"], 0, dims["head_dim"]), np.float32) for _ in names]
    fixed = {"encoder_hidden_states": states, "encoder_attention_mask": mask}
    enc = session("encoder.onnx").run(None, {"input_ids": src, "attention_mask": mask})[0]
    sess = session("decoder.onnx")
    full = sess.run(None, {"input_ids": tgt, **fixed, **dict(zip(names, empty))})
    past, pairs = empty, []
    for lo, hi in ((0, 3), (3, 4), (4, 6)):
        got = sess.run(None, {"input_ids": tgt[:, lo:hi], **fixed, **dict(zip(names, past))})
        pairs.append((got[0], ref_logits[:, lo:hi]))
        past = got[1:]
    from qbench.models.fast_greedy import split_logits

    split = split_logits(out / "decoder.onnx", states, mask, tgt, dims["num_layers"], dims["num_heads"],
                         dims["head_dim"], (0, 3, 4, 6))
    return {"encoder_max_abs_diff": diff([(enc, states)]),
            "decoder_max_abs_diff": diff([(full[0], ref_logits), *zip(full[1:], ref_present)]),
            "decoder_past_max_abs_diff": diff([*pairs, *zip(past, ref_present)]),
            "decoder_split_max_abs_diff": None if split is None else diff([(split, ref_logits)])}

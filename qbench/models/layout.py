"""Input and output names of an exported encoder/decoder pair: the contract between the exporter
(``qbench.models.seq2seq``) and the generation loop (``qbench.models.generate``), so neither imports the other."""

ENCODER_INPUTS = ("input_ids", "attention_mask")
DECODER_INPUTS = ("input_ids", "encoder_hidden_states", "encoder_attention_mask")


def past_names(num_layers: int) -> list[str]:
    return [f"past.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]

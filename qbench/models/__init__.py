"""Models: export from Hugging Face to ONNX, tokenizers, and the seq2seq generation loop."""

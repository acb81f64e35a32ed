"""The retrieval task: embed queries (``text``) and documents (``reference``), score rank of the true pair."""

from __future__ import annotations

import numpy as np


def embed(session, tokenizer, texts: list[str], batch_size: int) -> np.ndarray:
    """Embeddings in input order. Texts are batched by length so that little compute goes to padding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        emb = session.infer(tokenizer.encode_batch([texts[i] for i in idx]))[0]
        for i, e in zip(idx, emb):
            out[i] = e
    return np.stack(out).astype(np.float32)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ranks(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """1-based rank of doc i among all docs for query i, by cosine similarity (ties count against us)."""
    sim = _normalize(queries) @ _normalize(docs).T
    true = np.diag(sim)
    return (sim > true[:, None]).sum(axis=1) + 1


def retrieval_metrics(queries: np.ndarray, docs: np.ndarray) -> dict[str, float]:
    r = ranks(queries, docs)
    return {"accuracy_at_1": float((r == 1).mean()), "mrr": float((1.0 / r).mean())}


def fidelity(emb: np.ndarray, ref: np.ndarray) -> float:
    """Mean cosine between a variant's embeddings and FP32's, row by row."""
    return float((_normalize(emb) * _normalize(ref)).sum(axis=1).mean())

"""Accuracy (fraction of predictions equal to their label) as an evaluate metric that loads offline.

Same name, inputs and output key as the hub's "accuracy", written with numpy (no scikit-learn).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy: the (optionally weighted) fraction of predictions equal to their reference label."
_KWARGS = """
Args:
    predictions: predicted labels (int).
    references: true labels (int).
    normalize: if False, return the (weighted) number of correct predictions instead of the fraction.
    sample_weight: optional weight per sample.
Returns:
    accuracy: float; 1.0 when every prediction is right.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        correct = np.asarray(predictions) == np.asarray(references)
        weights = np.ones(len(correct)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if len(weights) != len(correct):
            raise ValueError(f"{len(weights)} sample weights for {len(correct)} predictions")
        hits = float(np.dot(correct, weights))
        if not normalize:
            return {"accuracy": hits}
        total = float(weights.sum())
        return {"accuracy": hits / total if total else float("nan")}  # no (weighted) samples: no accuracy

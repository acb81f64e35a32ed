"""Corpus chrF as an evaluate metric that loads offline.

Computed by qbench.tasks.mt_metrics (sacrebleu's CHRF with its defaults: character 6-grams, no word
n-grams, beta 2), so the value equals ``sacrebleu.corpus_chrf(predictions, [references])``.
chrF needs no tokenizer; ``lang`` is accepted for symmetry with the bleu module and ignored.
"""

import datasets
import evaluate

from qbench.tasks import mt_metrics

_DESCRIPTION = "Corpus chrF (sacrebleu defaults: nc=6, nw=0, beta=2) against one reference per prediction."
_KWARGS = """
Args:
    predictions: hypothesis strings.
    references: one reference string per prediction.
    lang: target language code; chrF does not depend on it.
Returns:
    score: corpus chrF in [0, 100]; signature: sacrebleu's signature string.
"""
_CITATION = """@inproceedings{popovic-2015-chrf, title = "chr{F}: character n-gram {F}-score for automatic {MT}
evaluation", author = "Popovi{\'c}, Maja", booktitle = "Proceedings of the Tenth Workshop on Statistical
Machine Translation", year = "2015"}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Chrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
            reference_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, lang="en"):
        stats = mt_metrics.sample_stats(predictions, references, lang)
        return {"score": mt_metrics.corpus_chrf_from_stats(stats), "signature": mt_metrics.signature("chrf", lang)}

"""Corpus BLEU for one target language, as an evaluate metric that loads offline.

Computed by qbench.tasks.mt_metrics (sacrebleu underneath, tokenizer chosen by ``lang``), so the value
equals ``sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenizer_for(lang))``. One
reference per prediction, unlike the hub's "sacrebleu" metric, which takes a list of references.
"""

import datasets
import evaluate

from qbench.tasks import mt_metrics

_DESCRIPTION = "Corpus BLEU (sacrebleu, smooth 'exp', 4-grams) with the tokenizer suited to the target language."
_KWARGS = """
Args:
    predictions: hypothesis strings.
    references: one reference string per prediction.
    lang: target language code (e.g. 'de', 'zh', 'ja'); picks the sacrebleu tokenizer. Default 'en'.
Returns:
    score: corpus BLEU in [0, 100]; signature: sacrebleu's signature string (tokenizer included).
"""
_CITATION = """@inproceedings{post-2018-call, title = "A Call for Clarity in Reporting {BLEU} Scores",
author = "Post, Matt", booktitle = "Proceedings of the Third Conference on Machine Translation", year = "2018"}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Bleu(evaluate.Metric):
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
        return {"score": mt_metrics.corpus_bleu_from_stats(stats), "signature": mt_metrics.signature("bleu", lang)}

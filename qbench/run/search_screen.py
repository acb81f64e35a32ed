"""The search's screen on the scoring subset (``search.screen``), and the settings its confirmations decide with.

A confirmation (the three-state interval decision on the full evaluation set) is the search's most expensive
step: on MiniLM it embeds 4,000 texts, four times the subset's 1,000. A point-estimate screen lets through
candidates whose drop on the subset is within budget but whose interval on the evaluation set is not: in the
MiniLM run of commit 24f63b5 (reports/example-minilm-auto) four candidates passed it and three of them were
INCONCLUSIVE when confirmed. The projected screen asks what the confirmation will ask, on the subset's own
per-sample statistics: the decision's one-sided upper bound of the drop, its distance from the subset's drop
narrowed by sqrt(n_subset / n_evaluation) per language (a bootstrap bound's width goes as one over the square
root of the sample count), must lie below the budget. It predicts; the evaluation set still decides, and a
candidate it lets through that does not show PASS there is followed by the next larger one, as before.
"""

from __future__ import annotations

import math
from collections import Counter


def settings(ctx):
    """The decision settings of a confirmation: the gate's, with alpha shared by the at most
    ``search.max_confirmations`` looks (Bonferroni: whichever look succeeds, the chance that a wrong PASS was
    among them stays within gate.alpha)."""
    from qbench.report import decision as dn

    st = dn.Settings.from_gate(ctx.cfg.gate.model_dump())
    return dn.Settings(alpha=st.alpha / ctx.cfg.search.max_confirmations, resamples=st.resamples, seed=st.seed,
                       correction=st.correction)


def eval_counts(samples) -> dict[str, int]:
    """Samples per language of the evaluation set, and 'all': the n each language's projection scales to."""
    return {**Counter(s.language for s in samples), "all": len(samples)}


def projected(per_sample, gate, st, n_eval: dict[str, int]) -> tuple[bool, float, str]:
    """(passes, worst projected upper bound, its language) of a candidate from the subset's per-sample
    statistics ``(base, var, langs)`` (the scorer's ``samples``): ``decide_stats`` on the subset with the
    confirmation's settings ``st``, each language's upper bound brought to the evaluation set's size,

        hi_eval = drop + (hi - drop) * sqrt(n_subset / n_eval),

    below ``gate.max_drop`` in every language the gate checks. A language the evaluation set lacks is left out:
    the confirmation cannot fail there either."""
    from qbench.report import decision as dn

    base, var, langs = per_sample
    d = dn.decide_stats(base, var, langs, gate.metric, gate.max_drop, gate.per, st)
    his = {x.lang: x.drop + (x.hi - x.drop) * math.sqrt(x.n / n_eval[x.lang])
           for x in d.langs if n_eval.get(x.lang)}
    if not his:  # nothing the evaluation set can decide on: no prediction to make, so nothing passes
        return False, math.inf, ""
    where = max(sorted(his), key=lambda k: his[k])
    return his[where] < gate.max_drop, his[where], where

"""The words of a verdict and the two definitions of time to target the speed claims are judged with.

Shared by every claims row (:mod:`divebatch.analysis.claims`, :mod:`divebatch.analysis.estimators`,
:mod:`divebatch.analysis.controls`); docs/analysis.md, "Claims and verdict rules".
"""

from __future__ import annotations

HOLDS, FAILS, NOT_MEASURED = "holds", "does not hold", "not measured at this scale"
# the two definitions of time to target the speed claims are judged with, in this order
AUTHORS, PER_RUN = "authors' definition", "per run"
NOT_EVIDENCE = "not evidence: the batch never resized"


def overall(verdicts) -> str:
    """``holds`` when every verdict is True, ``does not hold`` when one is False, ``not measured``
    when there is none (``verdicts``: an iterable of bools, one per dataset or arm)."""
    verdicts = list(verdicts)
    if not verdicts:
        return NOT_MEASURED
    return HOLDS if all(verdicts) else FAILS

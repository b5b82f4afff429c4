"""Demand classification of one series (Syntetos, Boylan & Croston 2005).

Two numbers of the observed readings place a series in one of four classes:

* ``ADI``, the average inter-demand interval: the number of readings over the number
  of non-zero readings (1.0 when every reading is a demand);
* ``CV²``, the squared coefficient of variation of the non-zero demand sizes
  (population variance over the squared mean; 0.0 with a single demand).

With the cut-offs :data:`ADI_CUTOFF` = 1.32 and :data:`CV2_CUTOFF` = 0.49 of
Syntetos, Boylan & Croston, "On the categorization of demand patterns", JORS 56 (2005):

==============  ===========  ===========
class           ADI          CV²
==============  ===========  ===========
``smooth``      < 1.32       < 0.49
``erratic``     < 1.32       >= 0.49
``intermittent``  >= 1.32    < 0.49
``lumpy``       >= 1.32      >= 0.49
==============  ===========  ===========

A series that never had a demand (finite readings, all 0: an item that did not sell)
is ``intermittent``: its ADI is infinite and its demand sizes do not vary (CV² 0, as
with a single demand), so the intermittent models, which forecast a demand rate (here
0), are its candidates. Cleaning keeps or quarantines such a series by
``cleaning.all_zero``. A series without a finite reading has no class (``None``).

Cleaning records the class of each series in ``silver/series.demand_class``, computed
on the readings that were observed (not the steps it filled); training computes the same
class from the same silver readings (``is_filled`` false) to pick the candidates of
intermittent series (``intermittent`` in the config).
"""

from __future__ import annotations

import numpy as np

SMOOTH, ERRATIC, INTERMITTENT, LUMPY = "smooth", "erratic", "intermittent", "lumpy"
DEMAND_CLASSES = (SMOOTH, ERRATIC, INTERMITTENT, LUMPY)
ADI_CUTOFF = 1.32
CV2_CUTOFF = 0.49


def demand_stats(y) -> tuple[float, float]:
    """``(ADI, CV²)`` of the finite readings of ``y``: ``(inf, 0.0)`` when they are all 0,
    ``(nan, nan)`` without a finite one."""
    x = np.asarray(y, dtype=float).ravel()
    x = x[np.isfinite(x)]
    sizes = x[x != 0]
    if x.size == 0:
        return float("nan"), float("nan")
    if sizes.size == 0:
        return float("inf"), 0.0
    adi = x.size / sizes.size
    mean = float(np.mean(sizes))
    cv2 = float(np.var(sizes) / mean**2) if mean != 0 else float("inf")
    return float(adi), cv2


def demand_class(y) -> str | None:
    """The class of ``y`` (one of :data:`DEMAND_CLASSES`; all zeros: intermittent),
    ``None`` without a finite reading."""
    adi, cv2 = demand_stats(y)
    if np.isnan(adi):
        return None
    if adi < ADI_CUTOFF:
        return SMOOTH if cv2 < CV2_CUTOFF else ERRATIC
    return INTERMITTENT if cv2 < CV2_CUTOFF else LUMPY


def observed(y, is_filled=None) -> np.ndarray:
    """The readings of ``y`` that were observed: those whose ``is_filled`` flag is false
    (all of them when there are no flags)."""
    x = np.asarray(y, dtype=float).ravel()
    if is_filled is None:
        return x
    return x[~np.asarray(is_filled, dtype=bool).ravel()]

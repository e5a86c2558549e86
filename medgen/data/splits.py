"""Patient-level, hashed train/test splits and the split fingerprint recorded in manifests.

A split must never depend on the order in which patients were listed (a re-sorted CSV
must give the same split) and must never put one patient on both sides. So:

* :func:`patient_split` ranks the *unique* patient ids by ``sha256(f"{seed}:{id}")`` and
  puts the first ``round(test_fraction * n)`` of them in the test set;
* :func:`split_hash` fingerprints a set of ids (sorted, de-duplicated, sha256), which the
  training manifest records so a checkpoint names the exact patients it was trained on;
* :func:`check_disjoint` is the guard ``fit()`` runs before training;
* :func:`near_duplicate_ids` finds ids that differ only by case or whitespace (``P01`` / ``p01`` /
  ``P 01``): they count as different patients, which is a leak if they are one; the manifest
  reader warns about them.

These few lines are written by hand because scikit-learn's ``GroupShuffleSplit`` (not a
dependency) draws from a RandomState over the group *order*, which is exactly the
order-dependence we want to avoid.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

__all__ = ["split_hash", "patient_split", "check_disjoint", "near_duplicate_ids"]


def _unique_sorted(patient_ids: Iterable[object]) -> list[str]:
    """Unique ids as strings, sorted; empty or missing ids are errors."""
    ids = set()
    for pid in patient_ids:
        if pid is None or str(pid).strip() == "":
            raise ValueError(f"patient ids must be non-empty strings, got {pid!r}")
        ids.add(str(pid))
    return sorted(ids)


def split_hash(patient_ids: Iterable[object], length: int = 16) -> str:
    """Stable hex fingerprint (sha256, first ``length`` characters) of a set of patient ids.

    Order and repetitions do not matter: ``split_hash(["b", "a", "a"]) == split_hash(["a", "b"])``.
    """
    text = "\n".join(_unique_sorted(patient_ids))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _rank_key(pid: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{pid}".encode("utf-8")).hexdigest()


def patient_split(
    patient_ids: Iterable[object], test_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split unique patient ids into ``(train_ids, test_ids)``, both sorted.

    Patients are ranked by ``sha256(f"{seed}:{id}")`` and the first ``round(test_fraction * n)``
    go to test (at least one when ``0 < test_fraction`` and there are two or more patients).
    The result depends only on the *set* of ids and the seed, never on their order.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    ids = _unique_sorted(patient_ids)
    n_test = round(test_fraction * len(ids))
    if test_fraction > 0 and n_test == 0 and len(ids) >= 2:
        n_test = 1
    ranked = sorted(ids, key=lambda pid: _rank_key(pid, seed))
    test = set(ranked[:n_test])
    return [p for p in ids if p not in test], sorted(test)


def check_disjoint(train_ids: Sequence[object], test_ids: Sequence[object]) -> None:
    """Raise a one-line ``ValueError`` naming the first overlapping ids if the sets intersect."""
    overlap = sorted({str(p) for p in train_ids} & {str(p) for p in test_ids})
    if overlap:
        shown = ", ".join(overlap[:5]) + (" ..." if len(overlap) > 5 else "")
        raise ValueError(f"train and test share {len(overlap)} patient(s): {shown}")


def near_duplicate_ids(patient_ids: Iterable[object]) -> list[list[str]]:
    """Groups (each sorted, the groups sorted) of distinct ids that are equal once case and whitespace are
    ignored, e.g. ``[["P 01", "P01", "p01"]]``; ``[]`` when there are none."""
    groups: dict[str, set[str]] = {}
    for pid in patient_ids:
        text = str(pid)
        groups.setdefault("".join(text.split()).casefold(), set()).add(text)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)

"""Patient-level hashed splits: order independence, disjointness, fingerprints, errors."""
import random

import pytest

from medgen.data.splits import check_disjoint, patient_split, split_hash

IDS = [f"p{i:03d}" for i in range(100)]


def test_split_hash_ignores_order_and_repeats():
    shuffled = IDS[::-1] + IDS[:10]
    assert split_hash(IDS) == split_hash(shuffled)
    assert len(split_hash(IDS)) == 16 and int(split_hash(IDS), 16) >= 0


def test_split_hash_changes_with_membership():
    assert split_hash(IDS) != split_hash(IDS[:-1])
    assert split_hash(["a", "b"]) != split_hash(["a", "c"])


def test_patient_split_is_order_independent_and_disjoint():
    train, test = patient_split(IDS, 0.2, seed=3)
    shuffled = IDS[:]
    random.Random(0).shuffle(shuffled)
    assert (train, test) == patient_split(shuffled, 0.2, seed=3)
    assert len(test) == 20 and len(train) == 80
    assert set(train) | set(test) == set(IDS)
    check_disjoint(train, test)


def test_patient_split_groups_samples_of_one_patient():
    samples = [pid for pid in IDS for _ in range(3)]  # three samples per patient
    train, test = patient_split(samples, 0.25, seed=0)
    assert len(train) + len(test) == len(IDS)
    assert not set(train) & set(test)


def test_patient_split_depends_on_seed_and_is_stable_under_growth():
    _, test_a = patient_split(IDS, 0.2, seed=0)
    _, test_b = patient_split(IDS, 0.2, seed=1)
    assert test_a != test_b
    # adding patients only ever moves the boundary; the ranking of old patients is unchanged
    _, test_big = patient_split(IDS + [f"q{i}" for i in range(100)], 0.1, seed=0)
    assert set(test_big) & set(IDS) <= set(test_a)


def test_patient_split_keeps_one_test_patient_for_tiny_sets():
    train, test = patient_split(["a", "b", "c"], 0.1)
    assert len(test) == 1 and len(train) == 2
    assert patient_split(["a", "b"], 0.0) == (["a", "b"], [])


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_patient_split_rejects_bad_fraction(bad):
    with pytest.raises(ValueError, match="test_fraction"):
        patient_split(IDS, bad)


def test_empty_or_none_ids_are_errors():
    with pytest.raises(ValueError, match="non-empty"):
        split_hash(["a", ""])
    with pytest.raises(ValueError, match="non-empty"):
        patient_split(["a", None], 0.5)


def test_check_disjoint_names_overlap_in_one_line():
    with pytest.raises(ValueError) as err:
        check_disjoint(["a", "b", "c"], ["c", "d", "b"])
    msg = str(err.value)
    assert "\n" not in msg and "2 patient(s)" in msg and "b, c" in msg

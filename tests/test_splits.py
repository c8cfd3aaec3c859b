"""Acceptance checks of `cardiac_dreamer.splits`: subjects never straddle splits, auto / manual / k-fold splits, the subjects file."""
import json

import pytest

from cardiac_dreamer.config import ConfigError
from cardiac_dreamer.splits import Splits, kfold_splits, load_subjects, split_patients


PATIENTS = [f"rec{i:02d}" for i in range(12)]
SUBJECTS = {p: f"person{i // 3}" for i, p in enumerate(PATIENTS)}  # 4 people with 3 recordings each (mixed below)
SUBJECTS.update({"rec09": "person9", "rec10": "person10", "rec11": "person11"})  # plus 3 people with one recording


def _subjects_of(ps): return {SUBJECTS[p] for p in ps}


@pytest.mark.parametrize("seed", range(50))
def test_subjects_never_straddle_auto_splits(seed):
    s = split_patients(PATIENTS, seed=seed, subjects=SUBJECTS)
    assert sorted(s.train + s.val + s.test) == PATIENTS
    assert not (_subjects_of(s.train) & _subjects_of(s.val) or _subjects_of(s.train) & _subjects_of(s.test)
                or _subjects_of(s.val) & _subjects_of(s.test))
    assert s.train and s.val and s.test


def test_auto_split_deterministic_and_seed_dependent():
    a = split_patients(PATIENTS, seed=7)
    assert a == split_patients(list(reversed(PATIENTS)), seed=7)
    assert len({json.dumps(split_patients(PATIENTS, seed=s).to_dict()) for s in range(10)}) > 5
    assert [len(a.train), len(a.val), len(a.test)] == [8, 2, 2]
    with pytest.raises(ConfigError, match="needs at least 3 patients"): split_patients(PATIENTS[:2])
    with pytest.raises(ConfigError, match="split_ratios"): split_patients(PATIENTS, ratios=[0.5, 0.5, 0.5])


@pytest.mark.parametrize("num_folds", [2, 3, 4, 5])
def test_kfold_covers_each_patient_exactly_once_as_test(num_folds):
    for seed in range(10):
        folds = kfold_splits(PATIENTS, num_folds, seed, subjects=SUBJECTS)
        assert len(folds) == num_folds
        assert sorted(p for f in folds for p in f.test) == PATIENTS
        if num_folds > 2: assert sorted(p for f in folds for p in f.val) == PATIENTS  # 2 folds: val is a fifth of the other fold
        for f in folds:
            assert sorted(f.train + f.val + f.test) == PATIENTS and f.train and f.val and f.test
            assert not (_subjects_of(f.train) & _subjects_of(f.val + f.test) or _subjects_of(f.val) & _subjects_of(f.test))
    assert kfold_splits(PATIENTS, 4, 1) == kfold_splits(PATIENTS, 4, 1)
    assert split_patients(PATIENTS, "kfold", seed=1, num_folds=4, fold=2) == kfold_splits(PATIENTS, 4, 1)[2]
    with pytest.raises(ConfigError, match="at least 2 folds"): kfold_splits(PATIENTS, 1, 0)
    with pytest.raises(ConfigError, match="data.fold"): split_patients(PATIENTS, "kfold", num_folds=3, fold=3)


@pytest.mark.parametrize("lists, words", [
    (dict(train=["rec00", "nobody"], val=["rec01"]), ["unknown patient folder(s) nobody", "known patients: rec00"]),
    (dict(train=["rec00", "rec01"], val=["rec01"]), ["'rec01' is in both data.train_patients and data.val_patients"]),
    (dict(train=["rec00"], val=["rec03"], test=["rec03"]), ["'rec03' is in both data.val_patients and data.test_patients"]),
    (dict(train=["rec00"]), ["data.val_patients is empty"]),
    (dict(val=["rec00"]), ["data.train_patients is empty"]),
    (dict(train=["rec00"], val=["rec01"]), ["subject 'person0' has folders in several splits"]),
])
def test_manual_split_errors(lists, words):
    with pytest.raises(ConfigError) as e: split_patients(PATIENTS, "manual", subjects=SUBJECTS, **lists)
    for w in words: assert w in str(e.value), str(e.value)


def test_manual_split_ok_and_subjects_file(tmp_path):
    s = split_patients(PATIENTS, "manual", train=PATIENTS[:6], val=PATIENTS[6:9], test=PATIENTS[9:], subjects=SUBJECTS)
    assert s == Splits(PATIENTS[:6], PATIENTS[6:9], PATIENTS[9:]) and Splits.from_dict(s.to_dict()) == s
    (tmp_path / "subjects.json").write_text(json.dumps({"alice": ["rec00", "rec01"]}))
    assert load_subjects(tmp_path) == {"rec00": "alice", "rec01": "alice"}
    (tmp_path / "s.yaml").write_text("rec02: bob\n")
    assert load_subjects(tmp_path, {"rec03": "bob"}, tmp_path / "s.yaml") == {"rec02": "bob", "rec03": "bob"}

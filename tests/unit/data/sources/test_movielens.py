import pytest

from ptmrec.data.sources.movielens import load_movielens
from ptmrec.data.sources.mmrec import SourceError


def test_movielens_100k_from_the_recbole_wheel():
    d = load_movielens(seed=2024)
    assert (d.num_users, d.num_items, len(d.users)) == (943, 1682, 100000)
    assert sum(d.split_counts().values()) == 100000
    assert d.item_texts[0] == "Toy Story (1995). Animation, Children's, Comedy"
    assert d.modalities == ["text"]


def test_split_is_seeded_and_follows_the_rule():
    a, b, c = (load_movielens(seed=s) for s in (1, 1, 2))
    assert (a.splits == b.splits).all() and not (a.splits == c.splits).all()
    # every MovieLens user has >= 20 ratings: 20 % held out, split evenly, test takes the odd one
    import numpy as np

    n = np.bincount(a.users, minlength=a.num_users)
    valid = np.bincount(a.users[a.splits == 1], minlength=a.num_users)
    test = np.bincount(a.users[a.splits == 2], minlength=a.num_users)
    assert (valid == (n // 5) // 2).all() and (test == n // 5 - (n // 5) // 2).all()


def test_rating_threshold_keeps_only_high_ratings():
    d = load_movielens(rating_threshold=4)
    assert len(d.users) == 55375  # ratings 4 and 5 in ml-100k


def test_missing_files_are_named(tmp_path):
    with pytest.raises(SourceError, match=r"ml-100k\.inter: not found"):
        load_movielens(path=str(tmp_path))


def test_original_ids_are_movielens_ids():
    d = load_movielens(seed=2024)
    ids = d.original_ids()
    assert ids["users"][:3] == ["1", "2", "3"] and len(ids["users"]) == 943
    assert ids["items"][0] == "1" and d.item_meta[0]["movielens_id"] == 1

import numpy as np

from ptmrec.data.sources.synthetic import make_synthetic


def test_synthetic_catalogue_has_images_and_texts_that_carry_preferences():
    d = make_synthetic(num_users=50, num_items=40, seed=3)
    assert d.modalities == ["image", "text"]
    assert d.item_image(0).size == (96, 96)
    assert len(d.item_texts) == 40 and d.item_texts[0].startswith("a ")
    # Users concentrate on few colours: the most frequent colour of a user covers over twice chance (1/8).
    colors = np.array([m["color"] for m in d.item_meta])
    share = [max(np.unique(colors[d.items[d.users == u]], return_counts=True)[1]) / (d.users == u).sum()
             for u in range(50)]
    assert np.mean(share) > 0.25


def test_synthetic_is_deterministic():
    a, b = make_synthetic(seed=1), make_synthetic(seed=1)
    assert (a.items == b.items).all() and a.item_texts == b.item_texts
    assert a.item_image(5).tobytes() == b.item_image(5).tobytes()


def test_power_law_catalogue_has_ten_interactions_per_item_and_a_heavy_head():
    from ptmrec.data.sources.synthetic import make_power_law

    d = make_power_law(num_users=2000, num_items=2000, seed=3)
    assert d.modalities == ["text"] and len(d.item_texts) == 2000 and d.item_image is None
    assert 8 < len(d.users) / 2000 < 11  # ~10 per item, a few lost to repeats
    assert len(np.unique(d.users * 2000 + d.items)) == len(d.users)  # each pair once
    per_user = np.bincount(d.users, minlength=2000)
    assert per_user.min() >= 1 and (per_user >= 3).mean() > 0.95  # 3 drawn each; a repeat can collapse
    popularity = np.sort(np.bincount(d.items, minlength=2000))[::-1]
    assert popularity[:20].sum() > 0.15 * len(d.items)  # the top 1 % of items: a large share, as in real logs
    counts = d.split_counts()
    assert counts["valid"] > 0 and counts["test"] > 0
    again = make_power_law(num_users=2000, num_items=2000, seed=3)
    assert (again.items == d.items).all() and again.item_texts == d.item_texts

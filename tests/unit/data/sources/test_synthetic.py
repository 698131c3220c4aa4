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

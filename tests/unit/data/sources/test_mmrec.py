import numpy as np
import pytest

from ptmrec.data.sources.mmrec import SourceError, load_mmrec
from ptmrec.data.tables import TEST, VALID, mmrec_split


def test_amazon_baby_counts(shared_data):
    d = load_mmrec(shared_data / "amazon-baby")
    assert (d.name, d.num_users, d.num_items, len(d.users)) == ("baby", 19445, 7050, 160792)
    assert d.split_counts() == {"train": 118551, "valid": 20559, "test": 21682}
    assert d.modalities == []


def test_amazon_clothing_has_text(shared_data):
    d = load_mmrec(shared_data / "amazon-clothing")
    assert (d.num_users, d.num_items, len(d.users)) == (39387, 23033, 278677)
    assert d.split_counts() == {"train": 197338, "valid": 40150, "test": 41189}
    assert d.modalities == ["text"]
    assert all(d.item_texts)  # every item has at least its category path
    assert not any("&amp;" in t for t in d.item_texts)  # HTML entities unescaped
    assert d.item_texts[0] == "Boutique Cutie. Clothing, Shoes & Jewelry | Girls | Clothing | Active | Active Skirts"


def test_split_rule_reproduces_amazon_per_user_sizes(shared_data):
    """Our MMRec split rule gives every user of Baby the same valid/test sizes as the published split."""
    d = load_mmrec(shared_data / "amazon-baby")
    ours = mmrec_split(d.users, d.num_users, seed=0)
    for label in (VALID, TEST):
        theirs_n = np.bincount(d.users[d.splits == label], minlength=d.num_users)
        ours_n = np.bincount(d.users[ours == label], minlength=d.num_users)
        assert np.array_equal(theirs_n, ours_n)


def make_dir(tmp_path, inter_text, name="toy"):
    (tmp_path / f"{name}.inter").write_text(inter_text)
    return tmp_path


def test_missing_column_names_file_and_column(tmp_path):
    root = make_dir(tmp_path, "userID\titemID\n0\t1\n")
    with pytest.raises(SourceError, match=r"toy\.inter: missing column 'x_label'"):
        load_mmrec(root)


def test_non_integer_id_names_line(tmp_path):
    root = make_dir(tmp_path, "userID\titemID\tx_label\n0\t1\t0\nabc\t2\t0\n")
    with pytest.raises(SourceError, match=r"toy\.inter, line 3: userID 'abc' is not an integer id"):
        load_mmrec(root)


def test_unknown_x_label_names_line(tmp_path):
    root = make_dir(tmp_path, "userID\titemID\tx_label\n0\t1\t0\n1\t2\t7\n")
    with pytest.raises(SourceError, match=r"toy\.inter, line 3: x_label '7' is not one of 0 \(train\)"):
        load_mmrec(root)


def test_short_row_and_empty_file(tmp_path):
    root = make_dir(tmp_path, "userID\titemID\tx_label\n0\t1\n")
    with pytest.raises(SourceError, match=r"line 2: expected 3 tab-separated fields, got 2"):
        load_mmrec(root)
    (tmp_path / "toy.inter").write_text("")
    with pytest.raises(SourceError, match="empty file"):
        load_mmrec(root)


def test_not_exactly_one_inter_file(tmp_path):
    with pytest.raises(SourceError, match="expected exactly one <name>.inter file, found none"):
        load_mmrec(tmp_path)


def test_item_text_and_images(tmp_path):
    from PIL import Image

    root = make_dir(tmp_path, "userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n1\t1\t2\n")
    (root / "toy_item_text.tsv").write_text(
        "itemID\tasin\ttitle\tbrand\tcategories\tdescription\n0\tA0\tMug &amp; Co\t\tKitchen | Mugs\t\n"
        "1\tA1\t\tAcme\t\tA sturdy lamp\n2\tA2\t\t\tToys\t\n")
    (root / "images").mkdir()
    Image.new("RGB", (10, 20), (255, 0, 0)).save(root / "images" / "1.jpg")
    d = load_mmrec(root)
    assert d.num_items == 3  # item 2 has text but no interaction: still in the catalogue
    assert d.item_texts == ["Mug & Co. Kitchen | Mugs", "Acme. A sturdy lamp", "Toys"]
    assert d.modalities == ["image", "text"]
    assert d.item_image(0) is None and d.item_image(1).size == (10, 20)


def test_id_mappings_give_the_original_ids(shared_data, tmp_path):
    d = load_mmrec(shared_data / "amazon-baby")
    assert d.item_ids[:2] == ["097293751X", "9729375011"] and d.user_ids[0] == "A1HK2FQW6KXQB2"
    from ptmrec.data.sources.mmrec import read_id_mapping

    bad = tmp_path / "i_id_mapping.csv"
    bad.write_text("asin\titemID\nB01\t0\nB02\tseven\n")
    with pytest.raises(SourceError, match=r"i_id_mapping.csv, line 3: expected '<id><TAB><itemID below 5>', got \['B02', 'seven'\]"):
        read_id_mapping(bad, "itemID", 5)
    assert read_id_mapping(tmp_path / "missing.csv", "itemID", 5) is None

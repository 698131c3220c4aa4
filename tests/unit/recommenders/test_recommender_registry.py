import pytest

from ptmrec.recommenders import (
    Recommender,
    available_recommenders,
    build_recommender,
    get_recommender_class,
    register_recommender,
)
from ptmrec.recommenders import registry


def test_the_four_models_are_registered():
    assert {"bpr", "lightgcn", "vbpr", "freedom"} <= set(available_recommenders())
    for name in available_recommenders():
        cls = get_recommender_class(name)
        assert issubclass(cls, Recommender) and cls.name == name


def test_build_by_name_is_case_insensitive(tiny):
    model = build_recommender("LightGCN", **tiny.kwargs(), embedding_dim=8)
    assert type(model).__name__ == "LightGCN" and model.embedding_dim == 8


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        build_recommender("ncf")
    message = str(err.value)
    assert "ncf" in message and all(name in message for name in available_recommenders())


def test_a_wrong_hyper_parameter_fails_by_name(tiny):
    with pytest.raises(TypeError, match="n_layer"):
        build_recommender("lightgcn", **tiny.kwargs(), n_layer=3)


def test_duplicate_and_non_lowercase_names_are_refused(monkeypatch):
    monkeypatch.setattr(registry, "_RECOMMENDERS", dict(registry._RECOMMENDERS))
    with pytest.raises(ValueError, match="already registered"):
        register_recommender("bpr", Recommender)
    with pytest.raises(ValueError, match="lowercase"):
        register_recommender("MyModel", Recommender)
    register_recommender("mymodel", Recommender)
    assert "mymodel" in available_recommenders()

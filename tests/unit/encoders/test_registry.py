from __future__ import annotations

import subprocess
import sys

import pytest

from ptmrec.encoders import ENCODERS, TwoTowerEncoder, available_encoders, build_encoder, register_encoder


def test_builtin_names_are_registered():
    assert {"bundled", "clip", "tiny-clip"} <= set(available_encoders())
    assert available_encoders() == sorted(ENCODERS)


def test_registry_view_is_read_only():
    with pytest.raises(TypeError):
        ENCODERS["x"] = lambda **_: None  # type: ignore[index]


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown encoder 'resnet'.*bundled, clip, tiny-clip"):
        build_encoder("resnet")


def test_names_are_case_insensitive():
    encoder = build_encoder("Tiny-CLIP")
    assert isinstance(encoder, TwoTowerEncoder)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("tiny-clip")(lambda **_: None)


def test_uppercase_registration_raises():
    with pytest.raises(ValueError, match="lowercase"):
        register_encoder("MyEncoder")


def test_builder_options_are_checked():
    assert build_encoder("tiny-clip", seed=3) is not None
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['normalize_text'\].*seed"):
        build_encoder("tiny-clip", normalize_text=False)


@pytest.mark.parametrize("modalities", [(), ("audio",), ("image", "video")])
def test_bad_modalities_raise(modalities):
    with pytest.raises(ValueError, match="modalities"):
        build_encoder("tiny-clip", modalities=modalities)


@pytest.mark.parametrize("name,message", [("bundled", "must be a local folder holding a copy of its MiniLM"),
                                          ("tiny-clip", "model=")])
def test_encoders_with_fixed_weights_reject_a_hub_model(name, message):
    with pytest.raises(ValueError, match=message):
        build_encoder(name, model="openai/clip-vit-base-patch16")


def test_import_does_not_pull_in_transformers():
    code = "import sys, ptmrec.encoders; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptmrec.encoders.efficientnet_lite import Conv2dSame, EfficientNetLite, efficientnet_lite0, lite0_weights_path


@pytest.fixture(scope="module")
def lite0():
    return efficientnet_lite0()


def test_checkpoint_keys_and_shapes_match_the_module_exactly():
    state_dict = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    expected = {name: tuple(t.shape) for name, t in EfficientNetLite().state_dict().items()}
    assert {name: tuple(t.shape) for name, t in state_dict.items()} == expected
    assert len(state_dict) == 296  # incl. num_batches_tracked; 16 blocks, no squeeze-excite


def test_pretrained_loads_strictly_in_eval_mode(lite0):
    assert not lite0.training
    assert lite0._bn0.eps == 1e-3
    reference = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(lite0._fc.weight, reference["_fc.weight"])


@pytest.mark.parametrize(("size", "pad_before", "pad_after"), [(224, 0, 1), (96, 0, 1), (225, 1, 1), (97, 1, 1)])
def test_same_padding_matches_tensorflow(size, pad_before, pad_after):
    """TF "SAME" for a 3x3 stride-2 conv: output ceil(size / 2); an odd total padding puts the
    extra pixel at the bottom/right, which PyTorch's symmetric ``padding=`` cannot do."""
    torch.manual_seed(0)
    conv = Conv2dSame(3, 4, 3, stride=2, bias=False)
    x = torch.randn(1, 3, size, size)
    expected = F.conv2d(F.pad(x, [pad_before, pad_after] * 2), conv.weight, stride=2)
    assert conv(x).shape[-1] == -(-size // 2)
    torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize("hw", [(224, 224), (97, 131)])
def test_features_and_logits_shapes(lite0, hw):
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        assert lite0.forward_features(x).shape == (2, 1280)
        assert lite0(x).shape == (2, 1000)


def test_drop_classifier_keeps_features():
    model = efficientnet_lite0()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model.forward_features(x)
        model.drop_classifier()
        torch.testing.assert_close(model.forward_features(x), before)
    assert not any(name.startswith("_fc") for name in model.state_dict())
    with pytest.raises(RuntimeError, match="classifier was dropped"):
        model(x)

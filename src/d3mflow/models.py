"""Classifiers (ResNet-9, ResNet-50) for 1-channel X-rays with a 2-logit head, their
checkpoints, and the choice of device.

The head has two logits, not one sigmoid output, because TRAK's image-classification task
defines the margin as ``logit_y - logsumexp_{j != y} logit_j`` over the classes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from d3mflow.io import atomic_path

log = logging.getLogger(__name__)

ARCHS = ("resnet9", "resnet50")
NUM_CLASSES = 2
IN_CHANNELS = 1

# ResNet-9 (Myrtle.ai's DAWNBench CIFAR model, used in TRAK's examples) scales its logits down
# so that the freshly initialised network starts with soft predictions.
RESNET9_LOGIT_SCALE = 0.125

# File names torch hub gives the torchvision ImageNet ResNet-50 weights when it downloads them.
_RESNET50_WEIGHTS = torchvision.models.ResNet50_Weights
_RESNET50_HUB_FILES = tuple(
    Path(w.url).name for w in (_RESNET50_WEIGHTS.IMAGENET1K_V2, _RESNET50_WEIGHTS.IMAGENET1K_V1)
)


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU: the building block of ResNet-9."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    """``x + f(x)``: two conv-bn-relu blocks with an identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Scale(nn.Module):
    """Multiply by a constant (ResNet-9's logit scale)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def resnet9(width: int = 64) -> nn.Sequential:
    """DAWNBench/TRAK ResNet-9 with channel widths w, 2w, 4w, 8w.

    Any input size of at least 8 px works: three 2x max-pools, then a global max pool. Width 8
    has about 100k parameters, small enough to train 32 px images quickly on a CPU."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    w = width
    return nn.Sequential(
        _conv_bn(IN_CHANNELS, w),
        _conv_bn(w, 2 * w),
        nn.MaxPool2d(2),
        _Residual(2 * w),
        _conv_bn(2 * w, 4 * w),
        nn.MaxPool2d(2),
        _conv_bn(4 * w, 8 * w),
        nn.MaxPool2d(2),
        _Residual(8 * w),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(8 * w, NUM_CLASSES, bias=False),
        _Scale(RESNET9_LOGIT_SCALE),
    )


def resnet50(*, pretrained: bool = False, weights_path: str | os.PathLike | None = None) -> nn.Module:
    """torchvision ResNet-50 with a 1-channel stem and a 2-logit head.

    With ``pretrained`` the ImageNet weights are loaded from ``weights_path`` or torch hub's
    cache (nothing is downloaded: compute nodes often have no internet). The RGB stem filters
    are summed over colour channels: a gray image fed to all three channels gives the same
    response, so the pretrained features carry over unchanged."""
    model = torchvision.models.resnet50(weights=None)
    if pretrained:
        file = _find_resnet50_weights(weights_path)
        log.info("loading ImageNet ResNet-50 weights from %s", file)
        try:
            model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError) as err:
            raise RuntimeError(f"{file} is not a torchvision ResNet-50 ImageNet state dict: {err}") from err
    rgb_stem = model.conv1
    model.conv1 = nn.Conv2d(IN_CHANNELS, 64, kernel_size=7, stride=2, padding=3, bias=False)
    with torch.no_grad():
        model.conv1.weight.copy_(rgb_stem.weight.sum(dim=1, keepdim=True))
    model.fc = nn.Linear(model.fc.in_features, NUM_CLASSES)
    return model


def _find_resnet50_weights(weights_path: str | os.PathLike | None) -> Path:
    """The local ImageNet weight file: ``weights_path`` if given, else torch hub's cache."""
    if weights_path is not None:
        candidates = [Path(weights_path)]
    else:
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        candidates = [hub / name for name in _RESNET50_HUB_FILES]
    for file in candidates:
        if file.is_file():
            return file
    raise RuntimeError(
        "pretrained ResNet-50 weights were requested but not found at "
        + ", ".join(str(c) for c in candidates)
        + " (nothing is downloaded). Set `model.pretrained: false`, or set `model.weights_path` "
        "to a local torchvision ResNet-50 ImageNet state dict (.pth)."
    )


def build_model(
    arch: str, *, width: int = 64, pretrained: bool = False, weights_path: str | os.PathLike | None = None
) -> nn.Module:
    """A 1-channel-input, 2-logit classifier: ``"resnet9"`` (of the given width) or ``"resnet50"``.

    ``width`` only applies to resnet9 (ResNet-50's widths are fixed); ``weights_path`` is only
    read when ``pretrained``. There are no published ResNet-9 weights, so ``pretrained`` with
    resnet9 is an error rather than silently ignored."""
    if arch == "resnet9":
        if pretrained:
            raise ValueError("no pretrained weights exist for resnet9; set `model.pretrained: false`")
        return resnet9(width)
    if arch == "resnet50":
        return resnet50(pretrained=pretrained, weights_path=weights_path)
    raise ValueError(f"unknown arch {arch!r}; expected one of {list(ARCHS)}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def select_device(prefer: str = "auto") -> torch.device:
    """The device to compute on, logged with the reason it was chosen.

    ``"auto"`` takes the GPU when torch can use one and otherwise falls back to the CPU, warning
    when CUDA_VISIBLE_DEVICES suggests a GPU was expected (a job placed on a GPU node with a
    CPU-only torch build, or a wrong device mask). An explicit ``"cuda"`` (or ``"cuda:N"``)
    that is unavailable is an error, because silently training on the CPU can be 100x slower."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    available = torch.cuda.is_available()
    if prefer == "auto":
        if available:
            device = torch.device("cuda")
            log.info("using %s (%s): auto and CUDA is available", device, torch.cuda.get_device_name(device))
            return device
        if visible not in (None, ""):
            log.warning(
                "CUDA_VISIBLE_DEVICES=%s is set but there is no usable GPU (torch %s, CUDA build %s); "
                "falling back to CPU",
                visible,
                torch.__version__,
                torch.version.cuda,
            )
        else:
            log.info("using cpu: auto and no CUDA device is available")
        return torch.device("cpu")
    device = torch.device(prefer)
    if device.type == "cuda":
        if not available:
            raise RuntimeError(
                f"device {prefer!r} requested but CUDA is not available "
                f"(CUDA_VISIBLE_DEVICES={visible!r}, torch {torch.__version__}); use device 'auto' or 'cpu'"
            )
        log.info("using %s (%s): requested", device, torch.cuda.get_device_name(device))
    else:
        log.info("using %s: requested", device)
    return device


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, arch: str, width: int, meta: dict) -> None:
    """Write the weights and what is needed to rebuild the model (arch, width) atomically.

    Tensors are saved from the CPU so a checkpoint made on a GPU loads anywhere; ``meta`` must
    hold plain Python values (it is loaded with ``weights_only=True``)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"arch": arch, "width": width, "state_dict": state, "meta": meta}, tmp)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model stored at ``path`` (on ``device``, in eval mode) and its ``meta`` dict, with the
    checkpoint's ``arch`` and ``width`` added.

    The architecture is rebuilt without pretrained weights: the checkpoint overwrites every
    parameter, so no ImageNet file is needed to load a trained ResNet-50."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(checkpoint["arch"], width=checkpoint["width"])
    model.load_state_dict(checkpoint["state_dict"])
    meta = {**checkpoint["meta"], "arch": checkpoint["arch"], "width": checkpoint["width"]}
    return model.to(device).eval(), meta

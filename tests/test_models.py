"""Model shapes and sizes, pretrained-weight lookup, device choice and checkpoints."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from d3mflow.models import build_model, count_parameters, load_checkpoint, save_checkpoint, select_device


@pytest.mark.parametrize("size", [32, 64])
def test_resnet9_outputs_two_logits(size):
    model = build_model("resnet9", width=8).eval()
    assert model(torch.randn(3, 1, size, size)).shape == (3, 2)


def test_resnet9_width8_is_about_100k_parameters():
    assert 80_000 < count_parameters(build_model("resnet9", width=8)) < 130_000
    # Parameters grow with the square of the width.
    assert count_parameters(build_model("resnet9", width=16)) > 3.5 * count_parameters(build_model("resnet9", width=8))


def test_resnet50_takes_one_channel_and_outputs_two_logits():
    model = build_model("resnet50").eval()
    assert model.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2)


def test_pretrained_resnet50_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    with pytest.raises(RuntimeError, match=r"not found.*model\.pretrained: false"):
        build_model("resnet50", pretrained=True)
    with pytest.raises(RuntimeError, match="missing.pth"):
        build_model("resnet50", pretrained=True, weights_path=tmp_path / "missing.pth")


def test_pretrained_resnet50_sums_rgb_stem_filters(tmp_path):
    imagenet = torchvision.models.resnet50(weights=None)  # stands in for the ImageNet file
    torch.save(imagenet.state_dict(), tmp_path / "r50.pth")
    model = build_model("resnet50", pretrained=True, weights_path=tmp_path / "r50.pth")
    torch.testing.assert_close(model.conv1.weight, imagenet.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.layer4[0].conv1.weight, imagenet.layer4[0].conv1.weight)
    assert model.fc.out_features == 2


def test_resnet9_has_no_pretrained_weights():
    with pytest.raises(ValueError, match="resnet9"):
        build_model("resnet9", pretrained=True)


def test_unknown_arch():
    with pytest.raises(ValueError, match="resnet18"):
        build_model("resnet18")


def test_select_device_auto_is_cpu_here_and_logged(caplog, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with caplog.at_level(logging.INFO, logger="d3mflow.models"):
        assert select_device() == torch.device("cpu")
    assert "using cpu" in caplog.text


def test_select_device_warns_when_gpu_expected_but_unusable(caplog, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="d3mflow.models"):
        assert select_device("auto") == torch.device("cpu")
    assert "CUDA_VISIBLE_DEVICES=0" in caplog.text and "falling back to CPU" in caplog.text


def test_select_device_cuda_unavailable_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        select_device("cuda")


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = build_model("resnet9", width=8)
    model.train()(torch.randn(4, 1, 32, 32))  # move batch-norm running statistics off their defaults
    meta = {"n_train": 12, "cfg": {"lr": 0.1}}
    save_checkpoint(model, tmp_path / "m.pt", arch="resnet9", width=8, meta=meta)
    loaded, loaded_meta = load_checkpoint(tmp_path / "m.pt")
    assert loaded_meta == {**meta, "arch": "resnet9", "width": 8}
    assert not loaded.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))

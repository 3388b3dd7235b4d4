"""Grad-CAM attention maps and the viz CLI on a tiny data set."""

import cv2
import pytest
import torch

from training.checkpoint import data_meta, save_checkpoint
from training.model import APNet, APNetConfig
from training.viz import grad_cam
from training.viz import main as viz_main


def test_grad_cam_maps_and_viz_cli(tiny_market, tmp_path, capsys):
    torch.manual_seed(0)
    model = APNet(APNetConfig(backbone="resnet18", level=2, num_classes=6))
    save_checkpoint(tmp_path / "ckpt", model, {"data": data_meta(64, 32)})
    image, target = torch.randn(1, 3, 64, 32), torch.randn(512)
    maps = grad_cam(model.eval(), image, target)
    assert len(maps) == 2 and all(
        m.shape == (64, 32) and m.min() == 0.0 and m.max() == pytest.approx(1.0) for m in maps
    )
    viz_main([str(tmp_path / "ckpt"), "--data", str(tiny_market), "--out", str(tmp_path / "viz"), "--num", "2"])
    pngs = sorted((tmp_path / "viz").glob("*.png"))
    assert len(pngs) == 2 and "wrote 2" in capsys.readouterr().out
    assert cv2.imread(str(pngs[0])).shape == (64, 4 * 32, 3)

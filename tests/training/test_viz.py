"""Ranked lists and Grad-CAM attention maps (pytorch-grad-cam) per pyramid level, and the viz CLI."""

import numpy as np
import pytest
import torch
from PIL import Image

from training.checkpoint import data_meta, save_checkpoint
from training.cli import viz_main
from training.model import APNet, APNetConfig
from training.viz import grad_cam, pick, pyramid_layers, rank


def test_pyramid_layers_are_every_attention_block_finest_first():
    model = APNet(APNetConfig(backbone="resnet18", level=2, num_classes=6))
    labels = [label for label, _ in pyramid_layers(model)]
    assert labels == ["layer3 L2 SAMS r=2", "layer3 L1 SE", "layer4 L2 SAMS r=2", "layer4 L1 SE"]
    assert [m for _, m in pyramid_layers(model)] == [*model.pyramid[3], *model.pyramid[4]]
    flat = APNet(APNetConfig(backbone="resnet18", level=0, num_classes=6))
    assert [label for label, _ in pyramid_layers(flat)] == ["layer3", "layer4"]  # no attention: the stage


def test_grad_cam_gives_one_map_per_level():
    torch.manual_seed(0)
    model = APNet(APNetConfig(backbone="resnet18", level=2, num_classes=6)).eval()
    image = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        target = model(torch.randn(1, 3, 64, 32))[0]
    maps = grad_cam(model, image, target)
    assert len(maps) == 4
    assert all(m.shape == (64, 32) and np.isfinite(m).all() and 0 <= m.min() and m.max() <= 1 + 1e-6 for m in maps)
    assert max(m.max() for m in maps) == pytest.approx(1.0, abs=1e-3)  # normalised, not all blank
    assert not all(np.allclose(maps[0], m) for m in maps[1:])  # each layer on its own, not one average


def test_rank_leaves_out_same_camera_matches_and_pick_mixes_right_and_wrong():
    # query 0: its own person in the same camera is nearest (left out), then another person, then itself (cam 2)
    qf = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    gf = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.6, 0.0, 0.8], [0.0, 1.0, 0.1]])
    q_pids, q_cams = np.array([1, 2]), np.array([1, 1])
    g_pids, g_cams = np.array([1, 3, 1, 2]), np.array([1, 2, 2, 2])
    rankings = rank(qf, gf, q_pids, g_pids, q_cams, g_cams, top=2)
    assert rankings[0].gallery == [1, 2] and rankings[0].correct == [False, True]
    assert rankings[1].gallery[0] == 3 and rankings[1].correct[0]
    assert rankings[0].scores[0] == pytest.approx(0.9 / np.linalg.norm([0.9, 0.1]))
    chosen = pick(rankings, 2)
    assert [r.query for r in chosen] == [1, 0]  # right first, then wrong
    assert [r.query for r in pick(rankings, 5)] == [1, 0]  # never more than there are


def test_viz_cli_writes_ranked_lists_and_attention_maps(tiny_market, tmp_path, capsys):
    torch.manual_seed(0)
    model = APNet(APNetConfig(backbone="resnet18", level=2, num_classes=6))
    save_checkpoint(tmp_path / "ckpt", model, {"data": data_meta(64, 32)})
    viz_main([str(tmp_path / "ckpt"), "--data", str(tiny_market), "--out", str(tmp_path / "viz"), "--num", "2"])
    viz_main([str(tmp_path / "ckpt"), "--data", str(tiny_market), "--out", str(tmp_path / "v3"), "--top", "3"])
    out = capsys.readouterr().out
    assert "ranked.png" in out and "attention.png" in out
    ranked, attention = Image.open(tmp_path / "viz" / "ranked.png"), Image.open(tmp_path / "viz" / "attention.png")
    assert ranked.size[0] > Image.open(tmp_path / "v3" / "ranked.png").size[0]  # 1 + 10 columns against 1 + 3
    assert attention.size[0] > attention.size[1]  # query, 4 maps and the match across, 2 queries down
    assert np.asarray(ranked.convert("RGB")).std() > 10  # a picture, not a blank page

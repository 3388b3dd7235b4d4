"""Losses, the learning-rate schedule and the typed config."""

from pathlib import Path

import pytest
import torch

from training.config import TrainConfig, load_config
from training.losses import CenterLoss, ReIDLoss, batch_hard_triplet_loss
from training.train import lr_at

ROOT = Path(__file__).resolve().parents[2]


def test_batch_hard_triplet_matches_a_brute_force_reference():
    torch.manual_seed(0)
    features, labels = torch.randn(12, 5), torch.arange(4).repeat_interleave(3)
    expected = []
    for a in range(12):
        d = [torch.dist(features[a], features[j]).item() for j in range(12)]
        pos = max(d[j] for j in range(12) if labels[j] == labels[a])
        neg = min(d[j] for j in range(12) if labels[j] != labels[a])
        expected.append(max(0.0, pos - neg + 0.3))
    assert batch_hard_triplet_loss(features, labels, 0.3).item() == pytest.approx(sum(expected) / 12, rel=1e-5)


def test_triplet_is_zero_for_separated_identities_and_has_gradients_otherwise():
    labels = torch.tensor([0, 0, 1, 1])
    separated = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    assert batch_hard_triplet_loss(separated, labels).item() == 0.0
    mixed = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.1, 0.0], [5.1, 5.0]], requires_grad=True)
    loss = batch_hard_triplet_loss(mixed, labels)
    loss.backward()
    assert loss.item() > 0 and mixed.grad.abs().sum() > 0


def test_reid_loss_combines_smoothed_ce_triplet_and_optional_center():
    torch.manual_seed(0)
    logits, features, labels = torch.randn(8, 4), torch.randn(8, 6), torch.arange(4).repeat(2)
    plain = ReIDLoss(4, 6)
    total, parts = plain(logits, features, labels)
    smoothed_ce = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    assert parts["ce"] == pytest.approx(smoothed_ce.item())
    assert total.item() == pytest.approx(parts["ce"] + parts["triplet"]) and "center" not in parts
    with_center = ReIDLoss(4, 6, center_weight=0.0005)
    total, parts = with_center(logits, features, labels)
    assert total.item() == pytest.approx(parts["ce"] + parts["triplet"] + 0.0005 * parts["center"], rel=1e-6)
    center = CenterLoss(2, 3)
    center.centers.data = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert center(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 3.0]]), torch.tensor([0, 1])).item() == pytest.approx(2.5)


def test_lr_schedule_is_the_seeds_warmup_and_steps():
    def lr(epoch):
        return lr_at(epoch, 4e-4, 10, 0.01, [40, 80, 120], 0.1)

    assert lr(0) == pytest.approx(4e-6)
    assert lr(5) == pytest.approx(4e-4 * (0.01 * 0.5 + 0.5))
    assert lr(10) == lr(39) == pytest.approx(4e-4)
    assert lr(40) == pytest.approx(4e-5) and lr(80) == pytest.approx(4e-6) and lr(159) == pytest.approx(4e-7)
    assert lr_at(0, 1.0, 0, 0.01, [], 0.1) == 1.0


def test_config_defaults_are_the_seed_recipe():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.epochs, cfg.milestones) == (4e-4, 1e-3, 160, [40, 80, 120])
    assert (cfg.ids_per_batch * cfg.images_per_id, cfg.height, cfg.width) == (80, 384, 192)
    assert (cfg.backbone, cfg.level, cfg.warmup_epochs, cfg.warmup_factor, cfg.threads) == ("resnet50", 2, 10, 0.01, 0)


def test_yaml_then_overrides_with_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("backbone: resnet18\nlr: 4e-4\nmilestones: [3, 6]\namp: false\nheight: 128\n")
    cfg = load_config(path, ["lr=1e-3", "width=64", "milestones=5,9", "flip_tta=no", "out_dir=x/y"])
    assert cfg.backbone == "resnet18" and cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert (cfg.height, cfg.width, cfg.milestones, cfg.amp, cfg.flip_tta) == (128, 64, [5, 9], False, False)
    assert cfg.out_dir == "x/y"
    with pytest.raises(ValueError, match="unknown config keys \\['lrr'\\]"):
        load_config(path, ["lrr=1"])
    with pytest.raises(ValueError, match="height: expected int"):
        load_config(None, ["height=tall"])
    with pytest.raises(ValueError, match="not key=value"):
        load_config(None, ["epochs"])


@pytest.mark.parametrize("name", ["demo", "market1501", "duke", "msmt17"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", ["data_root=elsewhere"])
    assert cfg.data_root == "elsewhere" and cfg.backbone in ("resnet18", "resnet50")
    if name != "demo":
        assert (cfg.dataset, cfg.epochs, cfg.lr, cfg.height, cfg.width) == (name, 160, 4e-4, 384, 192)


# The authors' settings, read from Gutianpei/APNet (configs/default.yml, config/defaults.py and the code they drive):
# their ResNet forward skips the stem ReLU, RandomErasing writes the mean's numbers, training runs in fp32 and
# MSMT17 trains on list_train.txt.
AUTHORS = {
    "backbone": "resnet50",
    "level": 2,
    "last_stride": 1,
    "stem_relu": False,
    "height": 384,
    "width": 192,
    "ids_per_batch": 20,
    "images_per_id": 4,
    "flip_prob": 0.5,
    "pad": 10,
    "erase_prob": 0.5,
    "erase_value": [0.485, 0.456, 0.406],
    "lr": 4e-4,
    "weight_decay": 1e-3,
    "epochs": 160,
    "warmup_epochs": 10,
    "warmup_factor": 0.01,
    "gamma": 0.1,
    "label_smoothing": 0.1,
    "triplet_margin": 0.3,
    "center_loss_weight": 0.0,
    "amp": False,
    "flip_tta": True,
    "msmt_train_val": False,
}


@pytest.mark.parametrize("name", ["market1501", "duke", "msmt17"])
def test_the_faithful_configs_are_the_authors_settings(name):
    from dataclasses import replace

    from torch import nn

    from training.train import build_model

    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert {key: getattr(cfg, key) for key in AUTHORS} == AUTHORS
    assert Path(cfg.pretrained).name == "resnet50-19c8e357.pth"
    # Their milestones are [40, 80, 120, 160]; over 160 epochs the schedule is the same.
    ours = [lr_at(e, cfg.lr, cfg.warmup_epochs, cfg.warmup_factor, cfg.milestones, cfg.gamma) for e in range(160)]
    theirs = [lr_at(e, 4e-4, 10, 0.01, [40, 80, 120, 160], 0.1) for e in range(160)]
    assert ours == theirs
    model = build_model(replace(cfg, pretrained="none", backbone="resnet18"), num_classes=3)
    assert not any(isinstance(m, nn.ReLU) for m in model.stages[0])

"""Checkpoint folder round trip: a plain state_dict loadable with weights_only=True, and meta.json."""

import json

import pytest
import torch

from training.checkpoint import data_meta, load_checkpoint, save_checkpoint
from training.model import APNet, APNetConfig


def test_round_trip_restores_weights_buffers_and_meta(tmp_path):
    torch.manual_seed(0)
    model = APNet(APNetConfig(backbone="resnet18", level=3, num_classes=6))
    model.train()
    model(torch.randn(4, 3, 64, 32))  # non-default BatchNorm running statistics
    meta = {"data": data_meta(64, 32), "dataset": "synth", "threshold": {"score": 0.61, "fpr": 1e-3}}
    save_checkpoint(tmp_path / "ckpt", model, meta)

    state = torch.load(tmp_path / "ckpt" / "model.pt", weights_only=True)
    assert set(state) == set(model.state_dict())
    loaded, loaded_meta = load_checkpoint(tmp_path / "ckpt")
    assert not loaded.training
    assert loaded_meta["model"] == {
        "backbone": "resnet18",
        "level": 3,
        "num_classes": 6,
        "last_stride": 1,
        "stem_relu": True,
    }
    assert loaded_meta["num_classes"] == 6
    assert loaded_meta["threshold"] == {"score": 0.61, "fpr": 1e-3}
    assert loaded_meta["metrics"] == {} and loaded_meta["created_at"] and loaded_meta["code_version"]
    assert loaded_meta["data"]["interpolation"] == "bilinear"
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert json.loads((tmp_path / "ckpt" / "meta.json").read_text()) == loaded_meta


def test_missing_files_and_meta_give_clear_errors(tmp_path):
    model = APNet(APNetConfig(backbone="resnet18", level=0, num_classes=2))
    with pytest.raises(ValueError, match="data"):
        save_checkpoint(tmp_path / "a", model, {})
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_checkpoint(tmp_path / "nothing")
    save_checkpoint(tmp_path / "b", model, {"data": data_meta(64, 32)})
    (tmp_path / "b" / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_checkpoint(tmp_path / "b")


def test_the_stem_setting_round_trips_and_older_checkpoints_keep_the_relu(tmp_path):
    torch.manual_seed(0)
    authors = APNet(APNetConfig(backbone="resnet18", level=1, num_classes=3, stem_relu=False)).eval()
    save_checkpoint(tmp_path / "authors", authors, {"data": data_meta(64, 32)})
    loaded, meta = load_checkpoint(tmp_path / "authors")
    assert meta["model"]["stem_relu"] is False and loaded.cfg.stem_relu is False
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), authors(x))
    # A meta.json written before the setting existed has no such key: the model it describes had the ReLU.
    path = tmp_path / "authors" / "meta.json"
    old = json.loads(path.read_text())
    del old["model"]["stem_relu"]
    path.write_text(json.dumps(old))
    older, _ = load_checkpoint(tmp_path / "authors")
    assert older.cfg.stem_relu is True
    with torch.no_grad():
        assert not torch.allclose(older(x), authors(x))

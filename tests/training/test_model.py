"""APNet: exact parameter counts against the authors' model, forward/backward at every pyramid level."""

import pytest
import torch
from torch import nn

from training.model import APNet, APNetConfig, SAMSAttention, load_imagenet_weights

# The paper authors' implementation, 751 classes: (with classifier, without classifier) per level.
AUTHORS_PARAMS = {0: (25_050_176, 23_512_128), 1: (25_112_640, 23_574_592), 2: (29_311_200, 27_773_152)}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("level", [0, 1, 2])
def test_parameter_counts_match_the_authors_model(level):
    model = APNet(APNetConfig(backbone="resnet50", level=level, num_classes=751))
    with_classifier, without = AUTHORS_PARAMS[level]
    assert _count(model) == with_classifier
    assert _count(model) - _count(model.classifier) == without


def test_level3_adds_a_four_group_sams_before_level2s_at_every_place():
    model = APNet(APNetConfig(backbone="resnet50", level=3))
    splits = [[b.splits for b in place if isinstance(b, SAMSAttention)] for place in model.pyramid]
    assert splits == [[4, 2]] * 5
    assert [len(place) for place in APNet(APNetConfig(backbone="resnet18", level=1)).pyramid] == [1] * 5


def test_frozen_biases_and_last_stride():
    model = APNet(APNetConfig(backbone="resnet18", level=2, num_classes=5))
    assert not model.bnneck.bias.requires_grad
    assert all(not place[0].bn.bias.requires_grad for place in model.pyramid)
    assert model.classifier.bias is None
    # last stride 1: layer4 keeps layer3's 1/16 resolution (64x32 -> 4x2), last stride 2 halves it.
    x = torch.randn(2, 3, 64, 32)
    model.eval()
    assert model.forward_features(x).shape == (2, 512, 4, 2)
    strided = APNet(APNetConfig(backbone="resnet18", level=2, num_classes=5, last_stride=2)).eval()
    assert strided.forward_features(x).shape == (2, 512, 2, 1)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_forward_backward_batch5_train_mode(level):
    torch.manual_seed(level)
    model = APNet(APNetConfig(backbone="resnet18", level=level, num_classes=7)).train()
    logits, feature = model(torch.randn(5, 3, 64, 32))
    assert logits.shape == (5, 7) and feature.shape == (5, model.feature_dim)
    (logits.logsumexp(1).mean() + feature.pow(2).mean()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    pyramid = [p for p in model.pyramid.parameters() if p.requires_grad]
    assert len(pyramid) == (0 if level == 0 else 5 * (2 + 7 * (level - 1)))
    assert all(p.grad.abs().sum() > 0 for p in pyramid)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_forward_backward_batch1(level):
    # A single image has no batch statistics, so BatchNorm (BNNeck, SAMS squeeze) runs on its running
    # statistics: the way one fine-tunes or computes Grad-CAM on a single crop.
    torch.manual_seed(level)
    model = APNet(APNetConfig(backbone="resnet18", level=level, num_classes=7)).train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    x = torch.randn(1, 3, 64, 32, requires_grad=True)
    logits, feature = model(x)
    assert logits.shape == (1, 7) and feature.shape == (1, model.feature_dim)
    logits[0, 3].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert model.stages[0][0].weight.grad.abs().sum() > 0


def test_resnet50_level3_runs():
    model = APNet(APNetConfig(backbone="resnet50", level=3, num_classes=3)).train()
    logits, feature = model(torch.randn(2, 3, 64, 32))
    logits.sum().backward()
    assert feature.shape == (2, 2048)
    assert model.pyramid[0][0].excite.weight.grad is not None


def test_eval_mode_returns_the_post_bnneck_embedding_independent_of_the_batch():
    torch.manual_seed(0)
    model = APNet(APNetConfig(backbone="resnet18", level=2, num_classes=7))
    model.train()
    for _ in range(3):  # move the running statistics away from their initial values
        model(torch.randn(4, 3, 64, 32))
    model.eval()
    x = torch.randn(5, 3, 64, 32)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, model.embed(x))
        assert not torch.allclose(out, model.pool(x))  # BNNeck applied
        assert torch.allclose(model(x[2:3]), out[2:3], atol=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match="level"):
        APNet(APNetConfig(backbone="resnet18", level=4))
    with pytest.raises(ValueError, match="backbone"):
        APNet(APNetConfig(backbone="vgg16"))


def test_imagenet_weights_from_a_local_torchvision_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-local.pth"
    torch.save(reference.state_dict(), path)
    model = APNet(APNetConfig(backbone="resnet18", level=1, num_classes=4))
    load_imagenet_weights(model, path)
    assert torch.equal(model.stages[0][0].weight, reference.conv1.weight)
    assert torch.equal(model.stages[4][1].bn2.running_var, reference.layer4[1].bn2.running_var)

    wrong = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong)
    with pytest.raises(ValueError, match="does not match"):
        load_imagenet_weights(model, wrong)
    with pytest.raises(FileNotFoundError):
        load_imagenet_weights(model, tmp_path / "absent.pth")


def test_imagenet_download_failure_names_the_local_path_option(monkeypatch):
    import torchvision

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    model = APNet(APNetConfig(backbone="resnet18", level=0, num_classes=4))
    with pytest.raises(RuntimeError, match="pretrained=/path/to/resnet18.pth"):
        load_imagenet_weights(model)


def _without_batch_counters(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def test_the_official_weight_file_format_loads_old_and_new_alike(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None)
    # resnet50-19c8e357.pth, the file the authors name, predates BatchNorm's num_batches_tracked buffers and
    # the zip serialisation; this is its key set, in its format.
    old_state = _without_batch_counters(reference.state_dict())
    assert len(reference.state_dict()) - len(old_state) == 53
    old = tmp_path / "resnet50-19c8e357.pth"
    torch.save(old_state, old, _use_new_zipfile_serialization=False)
    new = tmp_path / "resnet50-0676ba61.pth"
    torch.save(reference.state_dict(), new)
    for path in (old, new):
        model = APNet(APNetConfig(backbone="resnet50", level=2, num_classes=4))
        load_imagenet_weights(model, path)
        assert torch.equal(model.stages[0][0].weight, reference.conv1.weight)
        assert torch.equal(model.stages[3][5].bn3.running_mean, reference.layer3[5].bn3.running_mean)

    # Anything else that does not match still refuses, naming every offending key.
    model = APNet(APNetConfig(backbone="resnet50", level=2, num_classes=4))
    broken = dict(old_state)
    del broken["layer1.0.conv1.weight"], broken["layer4.2.bn3.running_var"]
    broken["layer1.0.attention.weight"] = torch.zeros(1)
    broken["head.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="does not match") as error:
        load_imagenet_weights(model, tmp_path / "broken.pth")
    message = str(error.value)
    for key in ("stages.1.0.conv1.weight", "stages.4.2.bn3.running_var", "stages.1.0.attention.weight", "head.weight"):
        assert key in message
    assert "2 missing" in message and "2 unexpected" in message and "num_batches_tracked" not in message


def test_stem_relu_setting_switches_the_relu_after_bn1_only():
    torch.manual_seed(0)
    with_relu = APNet(APNetConfig(backbone="resnet18", level=2, num_classes=4, stem_relu=True)).eval()
    authors = APNet(APNetConfig(backbone="resnet18", level=2, num_classes=4, stem_relu=False)).eval()
    assert with_relu.state_dict().keys() == authors.state_dict().keys()  # checkpoints load into either
    authors.load_state_dict(with_relu.state_dict())
    conv, bn, _, pool = authors.stages[0]
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        normalised = bn(conv(x))
        assert (normalised < 0).any()
        # The authors' forward: conv1, bn1, max-pool (their ReLU call is commented out).
        torch.testing.assert_close(authors.stages[0](x), pool(normalised), rtol=0, atol=0)
        torch.testing.assert_close(with_relu.stages[0](x), pool(normalised.relu()), rtol=0, atol=0)
        assert (authors.stages[0](x) < 0).any() and not (with_relu.stages[0](x) < 0).any()
        assert not torch.allclose(authors(x), with_relu(x))
    assert not any(isinstance(m, nn.ReLU) for m in authors.stages[0])
    # The parameter count is the authors' either way (a ReLU has none).
    assert _count(authors) == _count(with_relu)

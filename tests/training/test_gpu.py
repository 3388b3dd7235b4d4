"""The training and inference paths on a CUDA GPU, with the figures the README quotes (``make test-gpu``).

Needs only torch with CUDA. On a synthetic set (training.synth): APNet level 2 on ResNet-50 trains at 256x128,
batch 64 (16 ids x 4), with AMP for a few hundred steps (images/s, peak memory, the loss falls); the faithful
recipe's step (384x192, batch 80) in fp32 and with AMP (images/s, and from it seconds per epoch of each data
set's training split); eager inference at batch 256 in fp16 (images/s); GPU and CPU embeddings of the trained
model agree. Figures are printed (also with pytest's capture on) and, when REID_GPU_REPORT names a file, written
there as JSON. Batches are augmented on the CPU once and kept on the GPU, so the figures are the model's, not
the data loader's. Nothing asserts a speed.
"""

import json
import os
import time
from dataclasses import replace
from itertools import cycle

import pytest
import torch

from training.config import TrainConfig
from training.data import ImageDataset, PKBatchSampler, eval_transform, read_dataset, train_transform
from training.train import Runtime, build_trainee, train_step

pytestmark = pytest.mark.gpu

STEPS = 300  # timed AMP steps at 256x128
WARMUP = 20  # untimed steps first: cuDNN's autotuning, allocator growth
RECIPE_STEPS = 40  # timed steps of the faithful recipe, per precision
# Training images per epoch (the P x K plan uses a little less): Market-1501, DukeMTMC-reID, MSMT17 list_train.
EPOCH_IMAGES = {"market1501": 12_936, "duke": 16_522, "msmt17": 30_248}
REPORT: dict = {}


def _say(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n[gpu] {line}", end="")


@pytest.fixture(scope="module")
def device() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("torch was built without CUDA or sees no GPU")
    torch.backends.cudnn.benchmark = True
    REPORT["gpu"] = torch.cuda.get_device_name(0)
    REPORT["torch"] = torch.__version__
    yield torch.device("cuda:0")
    path = os.environ.get("REID_GPU_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(REPORT, f, indent=2)


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """20 training identities (the recipe's P) of about 14 images each, rendered at 256x128."""
    from training.synth import generate

    root = generate(tmp_path_factory.mktemp("gpu") / "synth", ids=40, cams=4, seed=0, progress=False)
    return read_dataset(root)


def _batches(data, p: int, k: int, height: int, width: int, count: int, device) -> list[tuple]:
    """``count`` augmented P x K batches, on the GPU."""
    dataset = ImageDataset(data.train, height, width, train_transform(height, width))
    sampler = PKBatchSampler([s.pid for s in data.train], p, k, seed=0)
    torch.manual_seed(0)
    out = []
    for epoch in range(count):
        sampler.set_epoch(epoch)
        indices = next(iter(sampler))
        images = torch.stack([dataset[i][0] for i in indices]).to(device)
        labels = torch.tensor([data.train[i].pid for i in indices], device=device)
        out.append((images, labels))
    return out


def _train(cfg: TrainConfig, data, batches, steps: int, device) -> tuple:
    """(model, losses, images/s, peak GiB) of ``steps`` timed steps after WARMUP untimed ones."""
    torch.manual_seed(0)
    rt = Runtime(rank=0, world_size=1, device=device, amp=cfg.amp)
    trainee = build_trainee(cfg, data.num_train_pids, rt)
    trainee.model.train()
    batch_iter = cycle(batches)
    losses = []
    for _ in range(WARMUP):
        losses.append(train_step(trainee.model, trainee, *next(batch_iter), rt)["loss"])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        losses.append(train_step(trainee.model, trainee, *next(batch_iter), rt)["loss"])
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    images = steps * batches[0][0].shape[0]
    return trainee.model, losses, images / seconds, torch.cuda.max_memory_allocated() / 2**30


@pytest.fixture(scope="module")
def trained(device, people):
    cfg = TrainConfig(
        backbone="resnet50", level=2, pretrained="none", height=256, width=128, ids_per_batch=16, images_per_id=4,
        amp=True, lr=3.5e-4,
    )  # fmt: skip
    batches = _batches(people, 16, 4, 256, 128, count=8, device=device)
    model, losses, rate, peak = _train(cfg, people, batches, STEPS, device)
    REPORT["train_amp_256x128_b64"] = {
        "steps": STEPS,
        "images_per_s": round(rate, 1),
        "peak_memory_gib": round(peak, 2),
        "loss_first_20": sum(losses[:20]) / 20,
        "loss_last_20": sum(losses[-20:]) / 20,
    }
    return model, losses


def test_training_resnet50_level2_with_amp(trained, capsys):
    model, losses = trained
    row = REPORT["train_amp_256x128_b64"]
    _say(
        capsys,
        f"{REPORT['gpu']}: train R50 level 2, 256x128, batch 64, AMP: {row['images_per_s']} images/s over "
        f"{row['steps']} steps, peak memory {row['peak_memory_gib']} GiB, loss {row['loss_first_20']:.3f} -> "
        f"{row['loss_last_20']:.3f}",
    )
    assert all(torch.isfinite(torch.tensor(losses)))
    assert row["loss_last_20"] < 0.7 * row["loss_first_20"]  # 8 batches seen ~40 times each: it must fit them
    assert next(model.parameters()).device.type == "cuda"


def test_the_faithful_recipe_step_in_fp32_and_amp(device, people, capsys):
    base = TrainConfig(backbone="resnet50", level=2, pretrained="none", stem_relu=False, height=384, width=192)
    batches = _batches(people, 20, 4, 384, 192, count=4, device=device)
    for amp in (False, True):
        _, losses, rate, peak = _train(replace(base, amp=amp), people, batches, RECIPE_STEPS, device)
        assert all(torch.isfinite(torch.tensor(losses)))
        name = "amp" if amp else "fp32"
        epochs = {data: round(images / rate, 1) for data, images in EPOCH_IMAGES.items()}
        REPORT[f"recipe_384x192_b80_{name}"] = {
            "images_per_s": round(rate, 1),
            "peak_memory_gib": round(peak, 2),
            "seconds_per_epoch_model_only": epochs,
        }
        _say(
            capsys,
            f"recipe step 384x192, batch 80, {name}: {rate:.1f} images/s, peak {peak:.2f} GiB; seconds per epoch "
            f"(model only): {epochs}",
        )


def test_eager_inference_fp16_batch_256(trained, device, capsys):
    model = trained[0].eval()
    x = torch.randn(256, 3, 256, 128, device=device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        for _ in range(5):
            out = model(x)
        torch.cuda.synchronize()
        started = time.perf_counter()
        repeats = 20
        for _ in range(repeats):
            out = model(x)
        torch.cuda.synchronize()
    rate = repeats * 256 / (time.perf_counter() - started)
    REPORT["inference_fp16_256x128_b256"] = {"images_per_s": round(rate, 1)}
    _say(capsys, f"eager inference 256x128, batch 256, fp16 autocast: {rate:.1f} images/s")
    assert out.shape == (256, 2048) and torch.isfinite(out).all()


def test_gpu_and_cpu_embeddings_agree(trained, people, device, capsys):
    model = trained[0].eval()
    dataset = ImageDataset(people.query[:16], 256, 128, eval_transform())
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    tf32 = torch.backends.cudnn.allow_tf32
    with torch.inference_mode():
        gpu_tf32 = model(x.to(device)).float().cpu()  # cuDNN's default: fp32 convolutions may run in TF32
        torch.backends.cudnn.allow_tf32 = False
        try:
            gpu = model(x.to(device)).float().cpu()
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        with torch.autocast("cuda", dtype=torch.float16):
            gpu16 = model(x.to(device)).float().cpu()
        cpu = model.cpu()(x)
    model.to(device)

    def cosine(a, b):
        return torch.nn.functional.cosine_similarity(a, b, dim=1).min().item()

    def relative(a, b):
        return ((a - b).norm(dim=1) / b.norm(dim=1)).max().item()

    row = {
        "fp32": {"min_cosine": cosine(gpu, cpu), "max_relative_l2": relative(gpu, cpu)},
        "tf32": {"min_cosine": cosine(gpu_tf32, cpu), "max_relative_l2": relative(gpu_tf32, cpu)},
        "fp16": {"min_cosine": cosine(gpu16, cpu), "max_relative_l2": relative(gpu16, cpu)},
    }
    REPORT["gpu_vs_cpu_16_queries"] = row
    _say(capsys, f"GPU vs CPU embeddings (16 queries): {row}")
    assert row["fp32"]["min_cosine"] > 0.99999 and row["fp32"]["max_relative_l2"] < 1e-3
    assert row["tf32"]["min_cosine"] > 0.999 and row["fp16"]["min_cosine"] > 0.999

"""Checkpoint folder: ``model.pt`` (a plain state_dict) + ``meta.json`` (everything needed to rebuild and serve it).

meta.json keys: "model" (APNetConfig fields), "train" (TrainConfig fields), "data" {"height", "width", "mean",
"std", "interpolation"}, "dataset", "num_classes", "metrics" {"rank1", "rank5", "rank10", "mAP", "mINP"} (may be
{}), "threshold" {"score": cosine similarity, "fpr"} or null, "code_version", "created_at".
Loading never unpickles objects: ``torch.load(weights_only=True)`` and JSON only.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from training.model import APNet, APNetConfig

MODEL_FILE = "model.pt"
META_FILE = "meta.json"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DATA_KEYS = ("height", "width", "mean", "std")


def data_meta(height: int, width: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> dict[str, Any]:
    """The "data" entry: how pixels become model input (bilinear resize, then (x/255 - mean) / std)."""
    return {
        "height": int(height),
        "width": int(width),
        "mean": list(mean),
        "std": list(std),
        "interpolation": "bilinear",
    }


def code_version() -> str:
    """The git commit of this source tree (with "-dirty" for uncommitted changes), or "unknown" outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "training"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def save_checkpoint(directory: str | Path, model: APNet, meta: dict[str, Any]) -> Path:
    """Write ``model.pt`` and ``meta.json`` into ``directory`` (created if needed); returns the folder.

    ``meta`` must hold "data"; "model", "num_classes", "code_version" and "created_at" are filled from the
    model and the environment, and the optional keys get their empty values. Files are written to a
    temporary name and renamed, so an interrupted save never leaves a half-written checkpoint file.
    """
    directory = Path(directory)
    if "data" not in meta or any(k not in meta["data"] for k in DATA_KEYS):
        raise ValueError(f'meta["data"] must hold {DATA_KEYS} (see training.checkpoint.data_meta)')
    full = {
        "train": {},
        "dataset": "",
        "metrics": {},
        "threshold": None,
        **meta,
        "model": asdict(model.cfg),
        "num_classes": model.cfg.num_classes,
    }
    full.setdefault("code_version", code_version())
    full.setdefault("created_at", datetime.now(UTC).isoformat(timespec="seconds"))
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_write(directory / MODEL_FILE, lambda f: torch.save(state, f))
    _atomic_write(directory / META_FILE, lambda f: f.write((json.dumps(full, indent=2) + "\n").encode()))
    return directory


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a checkpoint folder holds {MODEL_FILE} and {META_FILE}")
    meta = json.loads(path.read_text())
    for key in ("model", "data"):
        if key not in meta:
            raise ValueError(f'{path} has no "{key}" entry')
    return meta


def update_meta(directory: str | Path, **entries: Any) -> dict[str, Any]:
    """Replace top-level entries of a checkpoint's meta.json (e.g. metrics, threshold) and return the new meta."""
    meta = read_meta(directory) | entries
    _atomic_write(Path(directory) / META_FILE, lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
    return meta


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[APNet, dict[str, Any]]:
    """Rebuild the APNet of a checkpoint folder, in eval mode, and return it with its meta dict."""
    directory = Path(directory)
    meta = read_meta(directory)
    weights = directory / MODEL_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found")
    model = APNet(APNetConfig(**meta["model"]))
    state = torch.load(weights, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model.to(map_location).eval(), meta

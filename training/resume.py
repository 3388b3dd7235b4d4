"""The resumable train state: weights, optimisers, AMP scaler, loss state, epoch, and every random generator.

An interrupted run resumed from ``train_state.pt`` continues exactly as the uninterrupted run would have: the
state holds, per rank, Python's, numpy's, torch's CPU and CUDA generators and the data loader's generator (which
seeds the worker processes of each epoch), and the P x K sampler's seed and epoch. States are saved at epoch
ends. The file holds tensors, numbers and strings only, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

STATE_FILE = "train_state.pt"


def rng_state(loader_generator: torch.Generator) -> dict[str, Any]:
    """This process's random generators (numpy's key as a tensor: weights_only loads no numpy arrays)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": pos, "gauss": (has_gauss, gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], loader_generator: torch.Generator) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy = state["numpy"]
    has_gauss, gauss = numpy["gauss"]
    np.random.set_state((numpy["name"], numpy["key"].numpy().astype(np.uint32), numpy["pos"], has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    loader_generator.set_state(state["loader"].cpu())


def gather_rng_states(loader_generator: torch.Generator) -> list[dict[str, Any]]:
    """Every rank's generators, in rank order (a collective: every rank must call it)."""
    own = rng_state(loader_generator)
    if not (dist.is_available() and dist.is_initialized()):
        return [own]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, own)
    return states


def save_train_state(path: Path, parts: dict[str, Any], epoch: int, rngs: list[dict], sampler: dict) -> None:
    """Write atomically: ``parts`` maps names to objects with state_dict() (None for an absent optimiser)."""
    state = {name: obj.state_dict() if obj is not None else {} for name, obj in parts.items()}
    state |= {"epoch": epoch, "rng": rngs, "sampler": sampler}  # epoch: epochs completed
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_train_state(path: Path, parts: dict[str, Any], map_location: str | torch.device) -> dict[str, Any]:
    """Load the state_dicts of ``parts`` from ``path``; returns the rest (epoch, rng, sampler)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    for name, obj in parts.items():
        if obj is not None:
            obj.load_state_dict(state[name])
    return {key: state.get(key) for key in ("epoch", "rng", "sampler")}


def resume_path(resume: str, out_dir: str | Path) -> Path | None:
    """The state to resume from: ``resume`` is "" (never), "auto" (out_dir's, when there is one) or a folder."""
    if not resume:
        return None
    path = Path(out_dir if resume == "auto" else resume) / STATE_FILE
    if path.is_file():
        return path
    if resume == "auto":
        return None  # nothing to resume yet: start fresh
    raise FileNotFoundError(f"resume={resume}: {path} not found")

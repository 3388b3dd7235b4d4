"""benchmarks.linking end to end on a small site: the table prints every method, and the rendered-crop path embeds
through a real ONNX model (the hand-made linear one: the plumbing, not the figures)."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import linking
from benchmarks.synth_render import render_world
from benchmarks.synth_tracks import generate
from tests.support import make_spec, write_toy_onnx


def test_main_prints_the_tables_and_writes_json(tmp_path, capsys):
    out = tmp_path / "linking.json"
    linking.main(["--people", "40", "--eval-seed", "5", "--out", str(out)])
    text = capsys.readouterr().out
    for method in ("no linking", "appearance only", "learned topology", "true topology", "weighted", "max"):
        assert method in text
    res = json.loads(out.read_text())
    assert res["eval_seed"] == 5 and res["tune_seed"] == 0
    assert {r["method"] for r in res["linking"]} >= {"no linking", "appearance only", "true topology"}
    assert all(r["violations"] == 0 for r in res["linking"] if "topology" in r["method"])


def test_rendered_crops_are_embedded_by_the_model(tmp_path):
    spec = make_spec(height=32, width=16, dim=24)
    write_toy_onnx(tmp_path / "model.onnx", spec)
    world = generate(seed=3, people=4, duration=300)
    rendered = render_world(world, tmp_path, seed=3)
    assert rendered.crops.shape == (len(world.crops), 24)
    np.testing.assert_allclose(np.linalg.norm(rendered.crops, axis=1), 1.0, atol=1e-4)
    assert (rendered.sharpness > 0).all() and (rendered.score == 1).all()
    assert not np.allclose(rendered.crops[0], rendered.crops[-1])  # different people, different pixels
    np.testing.assert_array_equal(rendered.crop_track, world.crop_track)

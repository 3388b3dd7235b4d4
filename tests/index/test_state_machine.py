"""A hypothesis state machine drives the gallery (add, remove, search, reopen) against a dict oracle."""

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from index.gallery import Gallery, Record, SearchFilter

MODEL = "oracle"
DIM = 8


class GalleryMachine(RuleBasedStateMachine):
    # IVF2,Flat trains after 78 vectors and searches both lists (nprobe >= nlist): exact, so the oracle is exact
    # too, while the run still crosses the untrained -> trained switch and IVF's native removal.
    factory = "Flat"

    def __init__(self):
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="gallery-sm-"))
        self.gallery = Gallery.create(self.folder / "g", model_id=MODEL, dim=DIM, factory=self.factory)
        self.oracle: dict[int, tuple[np.ndarray, str]] = {}
        self.rng = np.random.default_rng(0)

    def teardown(self):
        self.gallery.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    @rule(n=st.integers(1, 40), camera=st.sampled_from(["a", "b"]))
    def add(self, n, camera):
        xb = self.rng.standard_normal((n, DIM)).astype(np.float32)
        xb /= np.linalg.norm(xb, axis=1, keepdims=True)
        ids = self.gallery.add(xb, [Record(camera_id=camera) for _ in range(n)], model_id=MODEL)
        assert len(set(ids)) == n and not set(ids) & set(self.oracle)
        self.oracle.update({i: (x, camera) for i, x in zip(ids, xb, strict=True)})

    @precondition(lambda self: self.oracle)
    @rule(data=st.data())
    def remove(self, data):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.oracle)), max_size=10, unique=True))
        unknown = max(self.oracle) + 1000
        assert self.gallery.remove([*ids, unknown]) == len(ids)
        for i in ids:
            del self.oracle[i]

    @rule(k=st.integers(1, 30), camera=st.sampled_from([None, "a"]))
    def search(self, k, camera):
        xq = self.rng.standard_normal((2, DIM)).astype(np.float32)
        xq /= np.linalg.norm(xq, axis=1, keepdims=True)
        filters = SearchFilter(cameras=[camera]) if camera else None
        hits = self.gallery.search(xq, k, filters, model_id=MODEL)
        live = [(i, x) for i, (x, cam) in self.oracle.items() if camera is None or cam == camera]
        for q, row in zip(xq, hits, strict=True):
            expected = sorted(live, key=lambda item: -float(item[1] @ q))[:k]
            assert [h.id for h in row] == [i for i, _ in expected]
            np.testing.assert_allclose([h.score for h in row], [float(x @ q) for _, x in expected], atol=1e-5)

    @rule()
    def reopen(self):
        self.gallery.close()
        self.gallery = Gallery.open(self.folder / "g")
        assert self.gallery.stats()["recovered"] == []

    @invariant()
    def counts_agree(self):
        assert len(self.gallery) == len(self.oracle)


class IVFGalleryMachine(GalleryMachine):
    factory = "IVF2,Flat"


SETTINGS = settings(max_examples=20, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck))
TestFlatGallery = GalleryMachine.TestCase
TestFlatGallery.settings = SETTINGS
TestIVFGallery = IVFGalleryMachine.TestCase
TestIVFGallery.settings = SETTINGS

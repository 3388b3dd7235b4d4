"""The schema and the validation agree: schemathesis's command line, every check and every phase (examples,
coverage, fuzzing, stateful), against the live API on 127.0.0.1 with a bounded number of examples per operation,
finds nothing. tests/server/schemathesis.toml says which statuses a schema-valid request may get (400 and 415 judge
an image's bytes and fields that must agree, which a schema cannot describe; never 422)."""

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import FakeEmbedder, LiveServer, gallery_settings, person_crops

ADMIN = "schemathesis-admin"
CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = 25


@pytest.mark.slow
def test_schemathesis_with_every_check_finds_nothing(tmp_path):
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis's `st` is installed with the dev extra"
    settings = gallery_settings(tmp_path / "gallery", admin_keys=ADMIN)
    with LiveServer(settings, embedder=FakeEmbedder()) as url:
        r = httpx.post(
            f"{url}/v1/gallery",
            files=[("images", crop) for crop in person_crops(3, seed=2)],
            data={"person_id": "p", "camera_id": "1"},
            headers={"X-API-Key": ADMIN},
        )
        assert r.status_code == 201, r.text
        command = [st, "--config-file", str(CONFIG), "--no-color", "run", f"{url}/openapi.json"]
        command += ["--checks", "all", "--max-examples", str(EXAMPLES), "--seed", "0", "--workers", "1"]
        command += ["--header", f"X-API-Key: {ADMIN}"]
        command += ["--report-dir", str(tmp_path / "report")]
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    summary = done.stdout.split("SUMMARY")[-1]
    # search, embed, gallery x4, probes x3, docs, tracks x2, identities x3
    assert "Tested: 15" in summary and "passed" in summary, summary

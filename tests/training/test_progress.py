"""Long jobs draw a progress bar only on a terminal: in a log (a pipe here) there is the summary line alone."""

import subprocess
import sys


def test_synth_in_a_log_prints_the_summary_without_a_bar(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "training.synth", str(tmp_path / "s"), "--ids", "4", "--cams", "2", "--seed", "0"]
        + ["--height", "64", "--width", "32", "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stdout and "\r" not in out.stdout + out.stderr
    assert "img/s" not in out.stderr  # tqdm's bar would have been written to stderr

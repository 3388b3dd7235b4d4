"""Settings from the environment (prefix REID_), as `make serve` and docker pass them."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import Settings


def test_backend_follows_the_triton_url(monkeypatch):
    monkeypatch.delenv("REID_TRITON_URL", raising=False)
    monkeypatch.delenv("REID_BACKEND", raising=False)
    monkeypatch.setenv("REID_ARTIFACT", "artifacts/demo")
    embedded = Settings(_env_file=None)
    assert embedded.backend == "onnx" and embedded.triton_model_name == "demo"
    monkeypatch.setenv("REID_TRITON_URL", "triton:8001")
    remote = Settings(_env_file=None)
    assert remote.backend == "triton" and remote.artifact == Path("artifacts/demo")


def test_lists_are_comma_separated_and_limits_are_checked(monkeypatch):
    monkeypatch.setenv("REID_ADMIN_KEYS", "a1, a2,")
    monkeypatch.setenv("REID_READ_KEYS", "r1")
    monkeypatch.setenv("REID_CORS_ORIGINS", "https://a.example,https://b.example")
    s = Settings(_env_file=None)
    assert s.admin_keys == ["a1", "a2"] and s.read_keys == ["r1"] and s.auth_enabled
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    monkeypatch.setenv("REID_MAX_TOP_K", "101")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_defaults_are_open_and_bounded(monkeypatch):
    for name in ("REID_ADMIN_KEYS", "REID_READ_KEYS", "REID_CORS_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(_env_file=None)
    assert not s.auth_enabled and s.cors_origins == []
    assert s.max_top_k == 100 and s.max_upload_bytes > 0 and s.max_in_flight > 0
    assert s.image_limits.min_side == s.min_side

"""Where the server finds its model and gallery, and the limits it enforces (environment, prefix ``REID_``).

The Makefile runs ``REID_ARTIFACT=... REID_GALLERY_DIR=... uvicorn server.main:app``. Lists (API keys, CORS
origins) are comma-separated. Reading settings does no I/O beyond the environment; the lifespan checks that
the artifact or the Triton server is really there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from formats.images import ImageLimits

MAX_TOP_K = 100  # hard ceiling; the OpenAPI schema documents it

CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REID_", extra="ignore")

    # The model: embedded ONNX Runtime on artifact/model.onnx, or a Triton server. None picks triton when a
    # Triton URL is set, onnx otherwise.
    backend: Literal["onnx", "triton"] | None = None
    artifact: Path | None = None
    triton_url: str | None = None
    triton_protocol: Literal["grpc", "http"] = "grpc"
    model_name: str | None = None  # Triton model name; defaults to the artifact folder's name

    # The gallery folder; created with index_factory when it does not exist yet.
    gallery_dir: Path = Path("galleries/default")
    index_factory: str = "Flat"
    search_threads: int = Field(1, ge=1)  # faiss OpenMP threads: 1 is fastest for single queries on few cores
    # Kept crops (index/crops.py): the bytes of every image added through the API, content-addressed, so the
    # gallery can be rebuilt for another model (python -m ingestion.reembed) and GET /v1/gallery/{id}/image shows
    # them. crops_dir defaults to <gallery_dir>/crops; a Milvus gallery has no folder and needs it set. An add
    # that would pass crops_max_bytes is refused with 507 before anything is written.
    keep_crops: bool = False
    crops_dir: Path | None = None
    crops_max_bytes: int = Field(10 * 1024**3, ge=1)

    # Limits, all checked before any model work.
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # whole request body
    max_images_per_request: int = Field(32, ge=1)  # gallery batch add
    max_pixels: int = Field(25_000_000, ge=1)
    min_side: int = Field(16, ge=1)
    max_aspect: float = Field(8.0, ge=1.0)
    max_top_k: int = Field(MAX_TOP_K, ge=1, le=MAX_TOP_K)
    max_in_flight: int = Field(16, ge=1)  # requests beyond this get an immediate 503
    embed_deadline_s: float = Field(10.0, gt=0)
    retry_after_s: int = Field(1, ge=0)

    # Auth: with no keys configured the API is open. Admin keys may mutate the gallery; read keys may only read.
    admin_keys: CommaList = []
    read_keys: CommaList = []
    cors_origins: CommaList = []  # CORS is off unless origins are listed

    @field_validator("admin_keys", "read_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _pick_backend(self) -> Settings:
        if self.backend is None:
            self.backend = "triton" if self.triton_url else "onnx"
        return self

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_pixels=self.max_pixels, min_side=self.min_side, max_aspect=self.max_aspect)

    @property
    def crops_root(self) -> Path | None:
        """Where kept crops live: crops_dir, else <gallery folder>/crops; None for a Milvus gallery without one."""
        if self.crops_dir is not None:
            return self.crops_dir
        uri = str(getattr(self, "gallery_uri", None) or "")
        if uri.startswith("milvus://") or uri.endswith(".db"):
            return None
        return Path(uri or self.gallery_dir) / "crops"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.admin_keys or self.read_keys)

    @property
    def triton_model_name(self) -> str | None:
        if self.model_name:
            return self.model_name
        return self.artifact.name if self.artifact is not None else None

"""Where the server finds its model and gallery, and the limits it enforces (environment, prefix ``REID_``).

The Makefile runs ``REID_ARTIFACT=... REID_GALLERY_DIR=... python -m server``. Lists (API keys, CORS
origins) are comma-separated. Reading settings does no I/O beyond the environment; the lifespan checks that
the artifact or the Triton server is really there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from formats.images import ImageLimits
from index.backends import parse_uri
from index.crops import crops_folder
from index.metadata import MAX_DEPTH, Limits

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
    # Which of the artifact's variants to serve (fp32, int8, fp16...; spec.json "variants"). Unset: the fastest that
    # passed its gates for this device and may share an fp32-built gallery (embedders.variants): INT8 on a CPU.
    model_variant: str | None = None

    # The gallery: gallery_uri names it (a folder: the embedded faiss + SQLite store; milvus://HOST:PORT/COLLECTION:
    # a Milvus server; a path ending in .db: Milvus Lite), else the folder gallery_dir. Created with index_factory
    # (faiss factory strings; Milvus also takes its own index type names) when it does not exist yet.
    gallery_uri: str | None = None
    gallery_dir: Path = Path("galleries/default")
    # A gallery folder (or Milvus Lite file) that does not exist is refused at start unless this is set: a
    # mistyped path would otherwise start an empty gallery that answers every search with "unknown".
    create_gallery: bool = False
    index_factory: str = "Flat"
    search_threads: int = Field(1, ge=1)  # faiss OpenMP threads: 1 is fastest for single queries on few cores
    # Gallery searches at once, each on its own thread beside the one writer thread (faiss and SQLite release the
    # GIL, Milvus answers over the network), so a search never queues behind an add.
    gallery_search_workers: int = Field(4, ge=1)
    # Seconds each call to a Milvus gallery may take (pymilvus' deadline, its retries stop there too); past it the
    # request fails with 503 gallery_unavailable instead of waiting minutes on a Milvus that stopped answering.
    # The embedded store ignores it.
    gallery_timeout_s: float = Field(10.0, gt=0)
    # Kept crops (index/crops.py): the bytes of every image added through the API, content-addressed, so the
    # gallery can be rebuilt for another model (python -m ingestion.reembed) and GET /v1/gallery/{id}/image shows
    # them. crops_dir defaults to <gallery_dir>/crops; a Milvus gallery has no folder and needs it set. An add
    # that would pass crops_max_bytes is refused with 507 before anything is written.
    keep_crops: bool = False
    crops_dir: Path | None = None
    crops_max_bytes: int = Field(10 * 1024**3, ge=1)
    # The verdict's identity-level false-alarm rate: the operating point calibrated for it (or the nearest stricter
    # one), from the gallery's calibration (python -m index.calibrate) when it has one, else from the artifact's.
    target_far: float = Field(0.01, gt=0, lt=1)
    # A gallery folder whose log (gallery.sqlite) is gone while its snapshot or manifest shows it held items is
    # refused (not ready); true starts it as an empty gallery instead, the old files set aside.
    gallery_allow_missing_log: bool = False

    # Limits, all checked before any model work.
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # whole request body
    max_images_per_request: int = Field(32, ge=1)  # gallery batch add
    max_pixels: int = Field(25_000_000, ge=1)
    min_side: int = Field(16, ge=1)
    max_aspect: float = Field(8.0, ge=1.0)
    max_top_k: int = Field(MAX_TOP_K, ge=1, le=MAX_TOP_K)
    max_in_flight: int = Field(16, ge=1)  # requests with their body in, beyond this get an immediate 503
    embed_deadline_s: float = Field(10.0, gt=0)
    retry_after_s: int = Field(1, ge=0)
    # Gallery metadata (a JSON object per image), refused with 422 beyond these. Depth counts nested objects and
    # arrays (a flat object is 1); items counts keys and array elements at every level; bytes is its compact JSON.
    metadata_max_depth: int = Field(8, ge=1, le=MAX_DEPTH)
    metadata_max_items: int = Field(256, ge=1)
    metadata_max_key_chars: int = Field(128, ge=1)
    metadata_max_value_chars: int = Field(4096, ge=1)
    metadata_max_bytes: int = Field(16 * 1024, ge=2)

    # Deadlines and limits on the way in, enforced by the server that `python -m server` configures (server/main.py
    # uvicorn_config). A slow upload costs a socket and a parked task, never an in-flight slot (admission waits for
    # the whole body), so the body deadline can be generous: 30 s carries the largest body (8 MiB) at 2.3 Mbit/s and
    # a 32-crop gallery batch over a poor mobile uplink, and still bounds how long one client holds a connection.
    body_timeout_s: float = Field(30.0, gt=0)  # the whole body within this of its request head, else 408 and close
    header_timeout_s: float = Field(10.0, gt=0)  # a request head within this of connecting or of the last answer
    keep_alive_s: int = Field(5, ge=1)  # idle keep-alive; the nginx front's upstream keepalive_timeout is below it
    max_header_bytes: int = Field(16 * 1024, ge=1024)  # a request head over this is refused (400, then closed)
    # The HTTP parser: httptools where installed (the faster; uvicorn[standard]), h11 otherwise or when named.
    http_parser: Literal["auto", "httptools", "h11"] = "auto"
    # Open connections from one client address; the connection over it is answered 429 and closed. 0 turns it off:
    # behind a proxy every client shares the proxy's address, so the proxy enforces the limit (nginx limit_conn).
    max_connections_per_client: int = Field(64, ge=0)

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
    def _crops_need_a_folder(self) -> Settings:
        if self.keep_crops and self.crops_root is None:
            raise ValueError("REID_KEEP_CROPS with a Milvus gallery needs REID_CROPS_DIR (a collection has no folder)")
        return self

    @model_validator(mode="after")
    def _pick_backend(self) -> Settings:
        if self.backend is None:
            self.backend = "triton" if self.triton_url else "onnx"
        return self

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_pixels=self.max_pixels, min_side=self.min_side, max_aspect=self.max_aspect)

    @property
    def metadata_limits(self) -> Limits:
        return Limits(
            max_depth=self.metadata_max_depth,
            max_items=self.metadata_max_items,
            max_key_chars=self.metadata_max_key_chars,
            max_value_chars=self.metadata_max_value_chars,
            max_bytes=self.metadata_max_bytes,
            int64=True,
        )

    @field_validator("gallery_uri", mode="after")
    @classmethod
    def _check_gallery_uri(cls, value: str | None) -> str | None:
        if not value:
            return None  # compose passes an unset variable as ""
        parse_uri(value)  # a ValueError names what is wrong, before anything starts
        return value

    @property
    def gallery_location(self) -> str:
        """The gallery URI the server opens: gallery_uri, else the folder gallery_dir."""
        return self.gallery_uri or str(self.gallery_dir)

    @property
    def crops_root(self) -> Path | None:
        """Where kept crops live: crops_dir, else <gallery folder>/crops; None for a Milvus gallery without one."""
        return crops_folder(self.gallery_location, self.crops_dir)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.admin_keys or self.read_keys)

    @property
    def triton_model_name(self) -> str | None:
        if self.model_name:
            return self.model_name
        return self.artifact.name if self.artifact is not None else None

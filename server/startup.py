"""What the server checks before it starts, so that a mistyped path fails at once with the path named instead of
serving an empty gallery or retrying a model that will never appear; and the line it says on start."""

from __future__ import annotations

from index.uri import parse_uri
from server.model_variant import variant_problem
from server.settings import Settings


class StartupRefused(Exception):  # noqa: N818 (a refusal, named for what the operator sees)
    """The settings name something that is surely a mistake; the message says what and what to do."""


def startup_problems(settings: Settings, *, own_embedder: bool = False) -> list[str]:
    """Each problem as one line (what is wrong, what to do); empty when the server can start.

    ``own_embedder``: the app was given its embedder, so the artifact settings are not used. A remote Triton is
    not checked here: it may come up later (the server stays not ready, naming it in /readyz)."""
    problems = []
    if settings.backend == "onnx" and not own_embedder:
        if settings.artifact is None:
            problems.append("no model: set REID_ARTIFACT (reid serve --artifact) to an exported model folder")
        elif not (settings.artifact / "model.onnx").is_file():
            problems.append(
                f"no model at {settings.artifact / 'model.onnx'}: REID_ARTIFACT (--artifact) must name a folder "
                "written by `python -m export` (make export)"
            )
        elif problem := variant_problem(settings.artifact, settings.model_variant):
            problems.append(problem)
    target = parse_uri(settings.gallery_location)
    if target.path is not None and not target.path.exists() and not settings.create_gallery:
        problems.append(
            f"no gallery at {target.path}: name an existing one (REID_GALLERY_DIR, reid serve --gallery), or "
            "start a new, empty one there with REID_CREATE_GALLERY=true (reid serve --create-gallery)"
        )
    return problems


def check_startup(settings: Settings, *, own_embedder: bool = False) -> None:
    if problems := startup_problems(settings, own_embedder=own_embedder):
        raise StartupRefused("; ".join(problems))


def describe(settings: Settings, url: str) -> str:
    """The line ``python -m server`` prints on start: where it answers, its model and its gallery."""
    if settings.backend == "triton":
        model = f"Triton at {settings.triton_url} (model {settings.triton_model_name})"
    else:
        model = f"{settings.artifact} (ONNX Runtime in-process)"
    target = parse_uri(settings.gallery_location)
    fresh = target.path is not None and not target.path.exists()
    gallery = f"{settings.gallery_location}{' (new, created now)' if fresh else ''}"
    return f"reid API on {url} (docs {url}/docs): model {model}, gallery {gallery}"

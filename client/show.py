"""`reid search QUERY --show out.png`: the query crop and its hits as one picture.

Each hit's crop comes from the server when it keeps crops (``GET /v1/gallery/{id}/image``, REID_KEEP_CROPS), else
from the file its metadata names as ``source`` (bulk indexing records the path under the indexed folder: give that
folder with ``--crops``), else the tile says that no picture is available. Frames: green for the query's person
(read from a Market-1501 file name), red for another person, grey when the query's person is unknown.
matplotlib and Pillow are imported only when a picture is drawn (the client's install has them; `reid` alone
loads neither).
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from client.models import Hit, SearchResult
from formats.names import JUNK_PERSON, person_and_camera

GOOD, BAD, NEUTRAL = "#1a9641", "#d7191c", "#7f7f7f"


@dataclass
class Tile:
    data: bytes | None  # image bytes, None when no picture could be found
    origin: str  # "server", a file path, or why there is no picture


def hit_crop(http: httpx.Client, hit: Hit, crops_dir: Path | None) -> Tile:
    """The picture of one hit: the server's kept crop, else the file named by its source, else why not."""
    try:
        response = http.get(f"/v1/gallery/{hit.id}/image")
        if response.status_code == 200:
            return Tile(response.content, "server")
        item = http.get(f"/v1/gallery/{hit.id}")
    except httpx.TransportError as exc:
        return Tile(None, f"the server did not answer ({type(exc).__name__})")
    sources = _sources(item.json() if item.status_code == 200 else {}, hit)
    if not sources:
        return Tile(None, "the server keeps no crop of it and it has no source path")
    for source in sources:
        for candidate in ([crops_dir / source] if crops_dir is not None else []) + [Path(source)]:
            if candidate.is_file():
                return Tile(candidate.read_bytes(), str(candidate))
    where = f" under {crops_dir}" if crops_dir is not None else " (give the indexed folder with --crops)"
    return Tile(None, f"the server keeps no crop of it and no file {' or '.join(sources)} is here{where}")


def _sources(item: dict, hit: Hit) -> list[str]:
    """Where the crop may be on disk: the item's source (bulk indexing records the file's path under the indexed
    folder; the API records "api"), and a "source" the caller put in its metadata."""
    found = [item.get("source"), (hit.metadata or {}).get("source")]
    return list(dict.fromkeys(s for s in found if isinstance(s, str) and s and s != "api"))


def query_person(path: Path) -> str | None:
    parsed = person_and_camera(path.name)
    return None if parsed is None or parsed[0] == JUNK_PERSON else parsed[0]


def _pixels(data: bytes):
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def draw(query: Path, result: SearchResult, tiles: list[Tile], out: Path, person: str | None) -> Path:
    """Query, then one tile per hit (rank, person, score), in one row; written as PNG to ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    cols = 1 + max(1, len(tiles))
    fig, axes = plt.subplots(1, cols, figsize=(0.95 * cols, 2.5), squeeze=False)
    axes = axes[0]
    _tile(axes[0], _pixels(query.read_bytes()), NEUTRAL, f"query\n{person or ''}")
    for rank, (ax, hit, tile) in enumerate(zip(axes[1:], result.hits, tiles, strict=False), start=1):
        colour = NEUTRAL if person is None else (GOOD if hit.person_id == person else BAD)
        title = f"{rank}: {hit.person_id or '-'}\n{hit.score:.3f}"
        if tile.data is None:
            _tile(ax, None, colour, title)
        else:
            _tile(ax, _pixels(tile.data), colour, title)
    if not result.hits:
        _tile(axes[1], None, NEUTRAL, "no hits")
    best = result.identities[0].person_id if result.identities else "-"
    fig.suptitle(f"verdict: {result.verdict or 'n/a'}, best identity {best}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _tile(ax, image, colour: str, title: str) -> None:
    if image is None:
        ax.text(0.5, 0.5, "no\npicture", ha="center", va="center", fontsize=7, color=NEUTRAL)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
    ax.set_title(title, fontsize=7, color=colour)


def show(
    url: str, api_key: str | None, timeout: float, query: Path, result: SearchResult, out: Path, crops_dir: Path | None
) -> Path:
    """Fetch every hit's picture and draw the search; says on stderr which hits have no picture and why."""
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=timeout) as http:
        tiles = [hit_crop(http, hit, crops_dir) for hit in result.hits]
    missing = [(hit, tile) for hit, tile in zip(result.hits, tiles, strict=True) if tile.data is None]
    for hit, tile in missing:
        sys.stderr.write(f"reid: no picture of hit {hit.id}: {tile.origin}\n")
    if missing and len(missing) == len(tiles):
        sys.stderr.write(
            "reid: the picture shows scores only; run the server with REID_KEEP_CROPS=true (or index with "
            "--keep-crops) to keep gallery crops, or pass --crops with the folder that was indexed\n"
        )
    return draw(query, result, tiles, out, query_person(query))

"""`reid timeline ID [--show out.png]`: a person's timeline (GET /v1/identities/{id}) as text, and as one picture
with the best crop of each track, its camera and its time span.

Each thumbnail comes the way `reid search --show` gets a hit's (client.show.hit_crop: the server's kept crop, else
the file its source names under ``--crops``), else the tile says there is no picture. matplotlib and Pillow are
imported only when a picture is drawn.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx

from client.models import Hit
from client.show import NEUTRAL, Tile, _pixels, _tile, hit_crop
from client.track_models import Timeline, TimelineEntry


def when(seconds: float | None) -> str:
    """A capture time as UTC ISO 8601 (to the second), "-" when unknown."""
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def span(entry: TimelineEntry) -> str:
    first, last = when(entry.first_seen), when(entry.last_seen)
    if first == last:
        return first
    if first[:10] == last[:10]:  # the same day: the date once
        return f"{first} - {last[11:]}"
    return f"{first} - {last}"


def lines(timeline: Timeline) -> list[str]:
    """The timeline as text rows: camera, time span, track, best item."""
    rows = [f"identity {timeline.identity_id}: {len(timeline.timeline)} tracks"]
    rows += [
        f"  {e.camera_id or '-':<10} {span(e):<42} track {e.track_id} ({e.n_items} items, best {e.best_item_id})"
        for e in timeline.timeline
    ]
    return rows


def draw(timeline: Timeline, tiles: list[Tile], out: Path) -> Path:
    """One tile per track in time order (camera, time span), written as PNG to ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    cols = max(1, len(tiles))
    fig, axes = plt.subplots(1, cols, figsize=(1.6 * cols, 3.0), squeeze=False)
    for ax, entry, tile in zip(axes[0], timeline.timeline, tiles, strict=False):
        title = f"{entry.camera_id or '-'}\n{when(entry.first_seen)[11:19] or '-'}\n{entry.track_id}"
        _tile(ax, None if tile.data is None else _pixels(tile.data), NEUTRAL, title)
    if not tiles:
        _tile(axes[0][0], None, NEUTRAL, "no tracks")
    first = timeline.timeline[0].first_seen if timeline.timeline else None
    fig.suptitle(f"identity {timeline.identity_id}, from {when(first)}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def show(url: str, api_key: str | None, timeout: float, timeline: Timeline, out: Path, crops_dir: Path | None) -> Path:
    """Fetch each track's best crop and draw the timeline; says on stderr which tracks have no picture and why."""
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=timeout) as http:
        tiles = [hit_crop(http, Hit(e.best_item_id, 0.0, None, e.camera_id), crops_dir) for e in timeline.timeline]
    for entry, tile in zip(timeline.timeline, tiles, strict=True):
        if tile.data is None:
            sys.stderr.write(f"reid: no picture of track {entry.track_id}: {tile.origin}\n")
    return draw(timeline, tiles, out)

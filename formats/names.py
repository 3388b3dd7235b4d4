"""Crop file names: which files are images, and the person and camera a ReID data set's name encodes.

Market-1501 names crops ``PPPP_cCsS_FFFFFF_NN.jpg`` (person, camera, sequence, frame, box) and DukeMTMC-reID
``PPPP_cC_fFFFFFFF.jpg``; both begin ``<person>_c<camera>``, which is all training needs. Person -1 marks
junk crops and 0 distractors in both protocols.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
JUNK_PERSON = "-1"

MARKET_NAME = re.compile(r"(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)")  # person, camera, sequence, frame, box
DUKE_NAME = re.compile(r"(-?\d+)_c(\d+)_f(\d+)")  # person, camera, frame
PERSON_CAMERA = re.compile(r"(-?\d+)_c(\d+)")  # the prefix both share
CAMERA_IN_NAME = re.compile(r"_c(\d+)")


@dataclass(frozen=True)
class CropName:
    person_id: str
    camera_id: str
    details: dict[str, int] = field(default_factory=dict)  # sequence, frame, box where the name has them


def is_image_file(path: str | PurePath) -> bool:
    return PurePath(path).suffix.lower() in IMAGE_SUFFIXES


def parse_dataset_name(stem: str) -> CropName | None:
    """A whole Market-1501 or DukeMTMC-reID name (without suffix), else None."""
    if m := MARKET_NAME.fullmatch(stem):
        return CropName(m[1], m[2], {"sequence": int(m[3]), "frame": int(m[4]), "box": int(m[5])})
    if m := DUKE_NAME.fullmatch(stem):
        return CropName(m[1], m[2], {"frame": int(m[3])})
    return None


def person_and_camera(name: str) -> tuple[str, str] | None:
    """(person, camera) from a name that begins ``<person>_c<camera>``, else None."""
    m = PERSON_CAMERA.match(name)
    return (m[1], m[2]) if m else None


def camera_in_name(stem: str) -> str | None:
    """The camera of a name that carries ``_c<N>`` somewhere, else None."""
    m = CAMERA_IN_NAME.search(stem)
    return m[1] if m else None

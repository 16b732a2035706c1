"""Maps from a 2D segmentor's own class ids to this project's label ids (docs/architecture.md).

Label ids: Occ3D classes 0..16, 17 = sky, 255 = ignore. A map is a lookup table `lut` of 256
uint8 entries: label = lut[segmentor id]; ids the map does not name become 255 (ignore).

Named maps:
- "openseed": the 21 text prompts the official SelfOcc code gives OpenSeeD
  (`utils/openseed_utils.py`, in that order) mapped as the official `openseed2nuscenes`
  (`utils/metric_util.py`) does, except that sky becomes 17 (the official table sends it to 0,
  which our semantic head keeps for 'others'; its sky channel is 17).
- "identity": ids 0..17 kept, everything else ignored (a segmentor that already speaks Occ3D).
A JSON file works too: either a list (position = segmentor id) or an object {"<id>": label}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Tuple, Union

import numpy as np

from selfocc_ns.data.occ3d import CLASS_ID, IGNORE_ID, SKY_ID

OPENSEED_PROMPTS_TO_LABEL: Tuple[Tuple[str, int], ...] = (
    ("barrier", CLASS_ID["barrier"]),
    ("bicycle", CLASS_ID["bicycle"]),
    ("bus", CLASS_ID["bus"]),
    ("car", CLASS_ID["car"]),
    ("construction_vehicle", CLASS_ID["construction_vehicle"]),
    ("crane", CLASS_ID["construction_vehicle"]),
    ("motorcycle", CLASS_ID["motorcycle"]),
    ("person", CLASS_ID["pedestrian"]),
    ("traffic_cone", CLASS_ID["traffic_cone"]),
    ("trailer", CLASS_ID["trailer"]),
    ("trailer_truck", CLASS_ID["trailer"]),
    ("truck", CLASS_ID["truck"]),
    ("road", CLASS_ID["driveable_surface"]),
    ("other_flat", CLASS_ID["other_flat"]),
    ("sidewalk", CLASS_ID["sidewalk"]),
    ("terrain", CLASS_ID["terrain"]),
    ("grass", CLASS_ID["terrain"]),
    ("building", CLASS_ID["manmade"]),
    ("wall", CLASS_ID["manmade"]),
    ("tree", CLASS_ID["vegetation"]),
    ("sky", SKY_ID),
)
"""(OpenSeeD prompt, label id) in OpenSeeD id order 0..20."""

OPENSEED_PROMPTS: Tuple[str, ...] = tuple(prompt for prompt, _ in OPENSEED_PROMPTS_TO_LABEL)
"""The 21 text prompts, for a user's OpenSeeD wrapper (its output id i means OPENSEED_PROMPTS[i])."""

NAMED_LABEL_MAPS: Tuple[str, ...] = ("openseed", "identity")


def lut_from_pairs(pairs: Mapping[int, int]) -> np.ndarray:
    """A 256-entry uint8 LUT from {segmentor id: label id}; unnamed ids map to 255 (ignore)."""
    lut = np.full(256, IGNORE_ID, dtype=np.uint8)
    for src, dst in pairs.items():
        if not (0 <= int(src) < 256):
            raise ValueError(f"segmentor id {src} out of range 0..255")
        if not (0 <= int(dst) <= SKY_ID or int(dst) == IGNORE_ID):
            raise ValueError(f"label id {dst} (for segmentor id {src}) must be 0..17 or 255")
        lut[int(src)] = int(dst)
    return lut


def _lut_from_json(path: Path) -> np.ndarray:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"label map {path} is not readable JSON ({err})") from err
    if isinstance(data, list):
        return lut_from_pairs(dict(enumerate(data)))
    if isinstance(data, dict):
        return lut_from_pairs({int(k): int(v) for k, v in data.items()})
    raise ValueError(f"label map {path} must be a JSON list or object, got {type(data).__name__}")


def get_label_map(name_or_path: Union[str, Path]) -> np.ndarray:
    """The LUT of a named map ("openseed", "identity") or of a JSON file path."""
    if str(name_or_path) == "openseed":
        return lut_from_pairs({i: label for i, (_, label) in enumerate(OPENSEED_PROMPTS_TO_LABEL)})
    if str(name_or_path) == "identity":
        return lut_from_pairs({i: i for i in range(SKY_ID + 1)})
    path = Path(name_or_path)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"label map file not found: {path}")
        return _lut_from_json(path)
    raise ValueError(f"unknown label map {name_or_path!r}: use one of {NAMED_LABEL_MAPS} or a JSON file")


def apply_label_map(class_map: np.ndarray, lut: np.ndarray) -> Tuple[np.ndarray, int]:
    """Map a segmentor's class map [H, W] (integer ids) to label ids; returns (uint8 labels, #pixels out of range).

    Ids outside 0..255 (e.g. -1 for "no class") become 255 (ignore) and are counted.
    """
    ids = np.asarray(class_map)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"segmentor output must hold integer class ids, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    out_of_range = (ids < 0) | (ids > 255)
    labels = lut[np.clip(ids, 0, 255)]
    labels[out_of_range] = IGNORE_ID
    return labels, int(out_of_range.sum())


def describe_label_map(lut: np.ndarray) -> Dict[int, int]:
    """{segmentor id: label id} of the ids the map names (for printing / logs)."""
    return {i: int(v) for i, v in enumerate(lut) if v != IGNORE_ID}

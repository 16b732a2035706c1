"""Label spaces of the 2D labels and the semantic head, and maps from a segmentor's ids to them (docs/architecture.md).

Two label spaces (`SemanticLabelSpace`, the model's `semantic_label_space`):
- "occ3d" (default): Occ3D classes 0..16, 17 = sky, 255 = ignore; an 18-channel head; the occupancy eval takes
  the argmax over channels 1..16;
- "openseed" (the official occ preset): the 21 OpenSeeD prompt ids 0..20 (20 = sky) exactly as OpenSeeD
  outputs them; a 21-channel head; the occupancy eval takes the argmax over all 21 channels and maps it by the
  official `openseed2nuscenes` table (`occupancy_class_lut`), where sky becomes class 0: occupied for the IoU,
  no class for the mIoU (the official code counts it as empty in the mIoU only).

A map is a lookup table `lut` of 256 uint8 entries: label = lut[segmentor id]; ids the map does not name
become 255 (ignore). Named maps:
- "openseed": the 21 text prompts the official SelfOcc code gives OpenSeeD (`utils/openseed_utils.py`, in that
  order). Into "occ3d" as the official `openseed2nuscenes` (`utils/metric_util.py`), except that sky becomes
  17 (the official table sends it to 0, which the Occ3D head keeps for 'others'); into "openseed": kept.
- "identity": the label space's ids kept (0..17 or 0..20), everything else ignored.
- "from-occ3d" (into "openseed" only): this project's Occ3D labels (e.g. the synthetic world's) as OpenSeeD
  ids, each class by its first prompt (`OCC3D_TO_OPENSEED`); 'others' (no prompt) becomes 255.
A JSON file works too: either a list (position = segmentor id) or an object {"<id>": label}.

A label folder (<semantics-dir>/<CHANNEL>/*.png) names its label space in <semantics-dir>/label_space.json
(`selfocc-labels` writes it); a folder without one holds "occ3d" labels (e.g. the synthetic world's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Literal, Mapping, Tuple, Union

import numpy as np

from selfocc_ns.data.occ3d import CLASS_ID, IGNORE_ID, SKY_ID

SemanticLabelSpace = Literal["occ3d", "openseed"]
LABEL_SPACES: Tuple[str, ...] = ("occ3d", "openseed")
OPENSEED_SKY_ID = 20
"""The sky prompt's id in the "openseed" label space."""

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

NAMED_LABEL_MAPS: Tuple[str, ...] = ("openseed", "identity", "from-occ3d")

OCC3D_TO_OPENSEED: Dict[int, int] = {
    label: next(i for i, (_, mapped) in enumerate(OPENSEED_PROMPTS_TO_LABEL) if mapped == label)
    for label in range(1, SKY_ID + 1)
}
"""Occ3D 2D label (1..16, 17 sky) -> the first OpenSeeD prompt mapped to it (others, 0, has none)."""


LABEL_SPACE_FILE = "label_space.json"
"""Written by `selfocc-labels` into the root of a label folder: {"label_space": ..., "mapping": ...}."""


def folder_label_space(semantics_dir: Union[str, Path]) -> SemanticLabelSpace:
    """The label space a label folder declares (`LABEL_SPACE_FILE`); "occ3d" when it declares none."""
    marker = Path(semantics_dir) / LABEL_SPACE_FILE
    if not marker.is_file():
        return "occ3d"
    try:
        space = json.loads(marker.read_text())["label_space"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{marker} is not a readable label-space file ({err})") from err
    _check_space(space)
    return space


def write_folder_label_space(semantics_dir: Union[str, Path], label_space: SemanticLabelSpace, mapping: str) -> None:
    """Declare a label folder's label space; refuses a folder that already declares another one."""
    _check_space(label_space)
    folder = Path(semantics_dir)
    if (folder / LABEL_SPACE_FILE).is_file() or any(folder.glob("*/*.png")):
        existing = folder_label_space(folder)
        if existing != label_space:
            raise ValueError(f"{folder} already holds '{existing}' labels; write '{label_space}' labels to another "
                             "folder (--out-dir)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LABEL_SPACE_FILE).write_text(json.dumps({"label_space": label_space, "mapping": mapping}, indent=2))


def _check_space(label_space: str) -> None:
    if label_space not in LABEL_SPACES:
        raise ValueError(f"unknown semantic label space {label_space!r}; expected one of {LABEL_SPACES}")


def max_label_id(label_space: SemanticLabelSpace) -> int:
    """Largest class id of a label space (17: Occ3D + sky; 20: OpenSeeD's sky)."""
    _check_space(label_space)
    return SKY_ID if label_space == "occ3d" else OPENSEED_SKY_ID


def label_space_channels(label_space: SemanticLabelSpace) -> int:
    """Semantic head channels of a label space: 18 (Occ3D 0..16 + sky) or 21 (the OpenSeeD prompts)."""
    return max_label_id(label_space) + 1


def sky_label_id(label_space: SemanticLabelSpace) -> int:
    """The sky class of a label space (17 or 20)."""
    return max_label_id(label_space)


FLAT_CLASSES: Tuple[str, ...] = ("driveable_surface", "other_flat", "sidewalk", "terrain")
"""Occ3D classes of (near-)horizontal ground, for the not-official flat-normal loss."""


def flat_label_ids(label_space: SemanticLabelSpace) -> Tuple[int, ...]:
    """The 2D label ids of the ground classes (`FLAT_CLASSES`) in a label space."""
    occ3d_ids = {CLASS_ID[name] for name in FLAT_CLASSES}
    if label_space == "occ3d":
        return tuple(sorted(occ3d_ids))
    return tuple(i for i, (_, label) in enumerate(OPENSEED_PROMPTS_TO_LABEL) if label in occ3d_ids)


def check_label_ids(labels: np.ndarray, label_space: SemanticLabelSpace, what: str) -> None:
    """Refuse a 2D label map holding ids outside the label space (0..max, 255 ignore), naming the file."""
    top = max_label_id(label_space)
    bad = (labels > top) & (labels != IGNORE_ID)
    if bad.any():
        raise ValueError(
            f"2D label {what} holds class id {int(labels[bad].max())}, outside the '{label_space}' label space "
            f"(0..{top}, 255 ignore); write the labels for this label space (`selfocc-labels --label-space "
            f"{label_space}`) or set the model's semantic_label_space to the one they were written in")


def occupancy_class_lut(label_space: SemanticLabelSpace) -> np.ndarray:
    """Head channel -> Occ3D class of an occupied voxel, for the occupancy eval (int64, one entry per channel).

    "occ3d": channel c is class c (the eval takes its argmax over 1..16 only); "openseed": the official
    `openseed2nuscenes` table, sky -> 0 (occupied, no class: the official code scores it empty in the mIoU).
    """
    if max_label_id(label_space) == SKY_ID:
        return np.arange(SKY_ID + 1, dtype=np.int64)
    table = [label for _, label in OPENSEED_PROMPTS_TO_LABEL]
    table[OPENSEED_SKY_ID] = 0
    return np.asarray(table, dtype=np.int64)


def display_class_lut(label_space: SemanticLabelSpace) -> np.ndarray:
    """Head channel -> Occ3D 2D label (0..16, 17 sky) for colouring renders (viewer, eval images)."""
    if max_label_id(label_space) == SKY_ID:
        return np.arange(SKY_ID + 1, dtype=np.int64)
    return np.asarray([label for _, label in OPENSEED_PROMPTS_TO_LABEL], dtype=np.int64)


def lut_from_pairs(pairs: Mapping[int, int], label_space: SemanticLabelSpace = "occ3d") -> np.ndarray:
    """A 256-entry uint8 LUT from {segmentor id: label id}; unnamed ids map to 255 (ignore)."""
    top = max_label_id(label_space)
    lut = np.full(256, IGNORE_ID, dtype=np.uint8)
    for src, dst in pairs.items():
        if not (0 <= int(src) < 256):
            raise ValueError(f"segmentor id {src} out of range 0..255")
        if not (0 <= int(dst) <= top or int(dst) == IGNORE_ID):
            raise ValueError(f"label id {dst} (for segmentor id {src}) must be 0..{top} or 255 "
                             f"('{label_space}' labels)")
        lut[int(src)] = int(dst)
    return lut


def _lut_from_json(path: Path, label_space: SemanticLabelSpace = "occ3d") -> np.ndarray:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"label map {path} is not readable JSON ({err})") from err
    if isinstance(data, list):
        return lut_from_pairs(dict(enumerate(data)), label_space)
    if isinstance(data, dict):
        return lut_from_pairs({int(k): int(v) for k, v in data.items()}, label_space)
    raise ValueError(f"label map {path} must be a JSON list or object, got {type(data).__name__}")


def get_label_map(name_or_path: Union[str, Path], label_space: SemanticLabelSpace = "occ3d") -> np.ndarray:
    """The LUT into `label_space` of a named map ("openseed", "identity", "from-occ3d") or of a JSON file path."""
    name = str(name_or_path)
    top = max_label_id(label_space)
    if name == "openseed" and label_space == "occ3d":
        return lut_from_pairs({i: label for i, (_, label) in enumerate(OPENSEED_PROMPTS_TO_LABEL)})
    if name in ("openseed", "identity"):
        return lut_from_pairs({i: i for i in range(top + 1)}, label_space)
    if name == "from-occ3d":
        if label_space != "openseed":
            raise ValueError("the 'from-occ3d' map writes OpenSeeD ids: use it with label space 'openseed'")
        return lut_from_pairs(OCC3D_TO_OPENSEED, label_space)
    path = Path(name_or_path)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"label map file not found: {path}")
        return _lut_from_json(path, label_space)
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

"""The world description on disk (`truth/world.json`) and `load_world`, which rebuilds the exact scenes.

With the world one can get exact truth for any camera (a novel view), any ray and any 3D point:

    world = load_world(data_dir)
    scene = world["scene-0061"]
    render = scene.render_camera(cam2global, intrinsics, width, height, timestamp_us)  # rgb, depth, classes
    hits = scene.cast_rays(origins, directions, timestamp_us)                          # distance, class, point
    sdf, cls = scene.sdf_and_class(points_global, timestamp_us)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterator, List, Union

from selfocc_ns.data.synthetic.world import SceneWorld

WORLD_JSON = Path("truth") / "world.json"
"""Where the world description lives, relative to the dataroot."""
FORMAT_NAME = "selfocc-ns-synthetic-world"
FORMAT_VERSION = 1


class SyntheticWorld:
    """All scenes of a generated world, by scene name."""

    def __init__(self, scenes: List[SceneWorld], config: Dict):
        self.scenes: Dict[str, SceneWorld] = {s.name: s for s in scenes}
        self.config = config
        """The WorldConfig values the world was generated with."""

    def __getitem__(self, scene_name: str) -> SceneWorld:
        if scene_name not in self.scenes:
            raise KeyError(f"scene {scene_name!r} is not in the synthetic world (it has {sorted(self.scenes)})")
        return self.scenes[scene_name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.scenes)

    def __len__(self) -> int:
        return len(self.scenes)

    @property
    def names(self) -> List[str]:
        return list(self.scenes)


def world_document(descriptions: List[Dict], config: Dict) -> Dict:
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": config, "scenes": descriptions}


def write_world(data_dir: Path, descriptions: List[Dict], config: Dict) -> Path:
    path = Path(data_dir) / WORLD_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(world_document(descriptions, config), f)
    return path


def load_world(data_dir: Union[str, Path]) -> SyntheticWorld:
    """Rebuild the analytic scenes of a world generated into `data_dir` (its nuScenes dataroot)."""
    path = Path(data_dir) / WORLD_JSON
    if not path.is_file():
        raise FileNotFoundError(f"no synthetic world description at {path} (generate one with selfocc-synth)")
    with open(path) as f:
        doc = json.load(f)
    if doc.get("format") != FORMAT_NAME or doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a {FORMAT_NAME} v{FORMAT_VERSION} file "
                         f"(format={doc.get('format')!r}, version={doc.get('format_version')!r})")
    return SyntheticWorld([SceneWorld(d) for d in doc["scenes"]], doc.get("config", {}))

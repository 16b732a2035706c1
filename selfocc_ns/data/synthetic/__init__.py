"""The embedded synthetic world: a procedural street rendered by exact ray casting, written as a real
nuScenes dataroot (tables, keyframe and sweep JPEGs, LIDAR_TOP .pcd.bin, maps) plus Occ3D gts,
2D label PNGs, truth depth and a JSON description from which `load_world` rebuilds the exact scenes.

    from selfocc_ns.data.synthetic import WorldConfig, generate_world, load_world
    summary = generate_world(Path("data/synthetic"), WorldConfig(scenes=2, keyframes=10))
    world = load_world(Path("data/synthetic"))
    depth = world["scene-0061"].render_camera(cam2global, K, W, H, timestamp_us).depth_z_m

On disk (dataroot = OUT_DIR): `v1.0-mini/*.json`, `samples/<CHANNEL>/`, `sweeps/<CHANNEL>/`, `maps/`,
`gts/<scene>/<sample_token>/labels.npz`, `semantics/<CHANNEL>/<image basename>.png` (Occ3D ids,
17 = sky), `truth/depth/<CHANNEL>/<image basename>.png` (uint16 z-depth * 256, 0 = no hit) and
`truth/world.json`.
"""

from selfocc_ns.data.synthetic.generate import WorldConfig, generate_world, scene_names
from selfocc_ns.data.synthetic.truth import SyntheticWorld, load_world
from selfocc_ns.data.synthetic.world import CameraRender, LidarScan, RayHits, SceneWorld

__all__ = ["WorldConfig", "generate_world", "load_world", "scene_names", "SyntheticWorld", "SceneWorld",
           "CameraRender", "LidarScan", "RayHits"]

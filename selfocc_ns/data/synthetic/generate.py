"""Generate the embedded synthetic world as a nuScenes dataroot (see the package docstring)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from selfocc_ns.data.frames import CAMERA_CHANNELS
from selfocc_ns.data.occ3d import OCC3D_CLASSES, save_labels
from selfocc_ns.data.synthetic import nuscenes_tables as nt
from selfocc_ns.data.synthetic import occ3d_gt, rig
from selfocc_ns.data.synthetic.layout import scene_description
from selfocc_ns.data.synthetic.road import ArcRoad
from selfocc_ns.data.synthetic.truth import WORLD_JSON, write_world
from selfocc_ns.data.synthetic.world import SceneWorld

MINI_TRAIN = ("scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077", "scene-1094",
              "scene-1100")
MINI_VAL = ("scene-0103", "scene-0916")
"""The official v1.0-mini splits (nuscenes.utils.splits.mini_train / mini_val)."""
FIRST_TIMESTAMP_US = 1_533_124_800_000_000
"""2018-08-01 12:00:00 UTC; scene k starts k days later."""
GENERATED_DIRS = ("samples", "sweeps", "maps", "gts", "semantics", "truth")
SUMMARY_JSON = Path("truth") / "summary.json"
"""What `generate_world` returned, relative to the dataroot."""
MAP_RESOLUTION_M = 0.1
"""nuscenes-devkit reads map PNGs at 0.1 m per pixel, pixel (0, H) at global (0, 0)."""


@dataclass
class WorldConfig:
    """What `generate_world` / `selfocc-synth` writes."""

    scenes: int = 2
    """Number of scenes (1..10). They take real v1.0-mini names so the official splits apply: up to 8 from
    mini_train, then mini_val; with 2 or more scenes at least one is a val scene."""
    keyframes: int = 10
    """Keyframes (samples) per scene, 0.5 s apart (2 Hz)."""
    sweeps_per_gap: int = 2
    """Non-key frames (camera and LiDAR sweeps) between consecutive keyframes, evenly spaced in time."""
    width: int = 400
    """Image width in pixels (intrinsics are nuScenes' scaled from 1600 x 900)."""
    height: int = 225
    """Image height in pixels."""
    seed: int = 0
    """Seed of the layouts, timestamps jitter and tokens; the same seed gives the same world."""
    moving_vehicles: int = 1
    """Other cars driving per scene (alternately oncoming and ahead in the ego lane)."""
    version: str = "v1.0-mini"
    """nuScenes version folder of the tables."""
    jpeg_quality: int = 92
    """JPEG quality of the camera images."""
    sweep_depth: bool = False
    """Also write truth depth PNGs for sweep images (keyframe images always get one)."""
    workers: int = 0
    """Worker processes for rendering; 0 = one per CPU core."""


def scene_names(count: int) -> List[str]:
    """Real v1.0-mini scene names: mini_train names first, then >= 1 mini_val name when count >= 2."""
    if not 1 <= count <= len(MINI_TRAIN) + len(MINI_VAL):
        limit = len(MINI_TRAIN) + len(MINI_VAL)
        raise ValueError(f"scenes must be between 1 and {limit} (the v1.0-mini scene names), got {count}")
    n_val = 0 if count == 1 else max(1, count - len(MINI_TRAIN))
    return list(MINI_TRAIN[: count - n_val]) + list(MINI_VAL[:n_val])


def plan_scene(config: WorldConfig, index: int, name: str, world: SceneWorld) -> nt.ScenePlan:
    """Timestamps, poses, tokens and file names of every sample_data of a scene."""
    seed = config.seed
    t0 = FIRST_TIMESTAMP_US + index * 86_400_000_000
    date = time.strftime("%Y-%m-%d", time.gmtime(t0 / 1e6))
    logfile = f"n900-{date}-12-00-00+0000"
    calibration = {m.channel: rig.camera_calibration(m, config.width, config.height) for m in rig.CAMERA_MOUNTS}
    calibration[rig.LIDAR_CHANNEL] = rig.lidar_calibration()
    for channel, record in calibration.items():
        record["token"] = nt.make_token(seed, name, "calibrated_sensor", channel)
    jitter_rng = np.random.default_rng([seed, index, 11])
    sample_tokens = [nt.make_token(seed, name, "sample", i) for i in range(config.keyframes)]
    frames: List[nt.FramePlan] = []
    gap = 500_000
    for i in range(config.keyframes):
        subs = [0] + (list(range(1, config.sweeps_per_gap + 1)) if i + 1 < config.keyframes else [])
        for j in subs:
            lidar_t = t0 + i * gap + round(j * gap / (config.sweeps_per_gap + 1))
            frame = nt.FramePlan(len(frames), j == 0, lidar_t, sample_tokens[i] if j == 0 else sample_tokens[i + 1])
            times = {m.channel: lidar_t + round(m.fire_offset_ms * 1000) + int(jitter_rng.integers(-500, 501))
                     for m in rig.CAMERA_MOUNTS}
            times[rig.LIDAR_CHANNEL] = lidar_t
            for channel, ts in times.items():
                folder = "samples" if j == 0 else "sweeps"
                ext = "pcd.bin" if channel == rig.LIDAR_CHANNEL else "jpg"
                pose = nt.ego_pose_fields(world.ego_pose(ts))
                frame.sensors[channel] = nt.SensorRecord(
                    channel, nt.make_token(seed, name, channel, frame.frame_index), ts,
                    f"{folder}/{channel}/{logfile}__{channel}__{ts}.{ext}", pose["rotation"], pose["translation"],
                    calibration[channel]["token"])
            frames.append(frame)
    road = world.road
    description = (f"Synthetic street, seed {seed}: arc radius {road.radius_m:.0f} m, ego "
                   f"{world.ego['speed_mps']:.1f} m/s, {len(world.tracks)} moving vehicle(s)")
    return nt.ScenePlan(name, nt.make_token(seed, name, "scene"), nt.make_token(seed, name, "log"), logfile,
                        nt.make_token(seed, name, "map"), description, calibration, frames, sample_tokens)


def sensor_matrix(calibration: Dict) -> np.ndarray:
    return rig.pose_matrix(calibration["rotation"], calibration["translation"])


def map_mask(road: ArcRoad) -> np.ndarray:
    """uint8 semantic-prior map (255 on carriageway and sidewalks) of the global area [0, x_max] x [0, y_max]."""
    ss, dd = np.meshgrid(np.linspace(road.s_min_m, road.s_max_m, 64), np.linspace(-60, 60, 7))
    extent = road.xy(ss, dd).reshape(-1, 2).max(0) + 20.0
    coarse = 0.5  # evaluate every 0.5 m, then repeat to the devkit's 0.1 m pixels
    factor = round(coarse / MAP_RESOLUTION_M)
    nx, ny = int(np.ceil(extent[0] / coarse)), int(np.ceil(extent[1] / coarse))
    x = (np.arange(nx) + 0.5) * coarse
    y = (ny - np.arange(ny) - 0.5) * coarse  # row 0 is the largest y
    s, d = road.sd(*np.meshgrid(x, y))
    inside = (np.abs(d) <= road.half_width_m + road.sidewalk_width_m) & (s >= road.s_min_m) & (s <= road.s_max_m)
    mask = np.where(inside, 255, 0).astype(np.uint8)
    return np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)


# ------------------------------------------------------------------------------------------ per-frame work

_STATE: Dict[str, object] = {}
"""Set before the worker pool forks: root, config, worlds, plans (read-only in the workers)."""


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def render_frame(task: Tuple[int, int]) -> Dict:
    """Render and write one frame (6 images + labels + depth, LiDAR sweep, and gts for keyframes)."""
    scene_index, frame_index = task
    root: Path = _STATE["root"]  # type: ignore[assignment]
    config: WorldConfig = _STATE["config"]  # type: ignore[assignment]
    world: SceneWorld = _STATE["worlds"][scene_index]  # type: ignore[index]
    plan: nt.ScenePlan = _STATE["plans"][scene_index]  # type: ignore[index]
    frame = plan.frames[frame_index]
    start = time.perf_counter()
    class_pixels = np.zeros(18, dtype=np.int64)
    cam2globals, intrinsics, depths = [], [], []
    for channel in CAMERA_CHANNELS:
        rec = frame.sensors[channel]
        cam2global = rec.ego2global @ sensor_matrix(plan.calibration[channel])
        k = np.array(plan.calibration[channel]["camera_intrinsic"])
        render = world.render_camera(cam2global, k, config.width, config.height, rec.timestamp_us)
        path = root / rec.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render.rgb).save(path, quality=config.jpeg_quality)
        basename = Path(rec.filename).stem
        _save_png(root / "semantics" / channel / f"{basename}.png", render.class_id)
        class_pixels += np.bincount(render.class_id.reshape(-1), minlength=18)
        if frame.is_key_frame or config.sweep_depth:
            depth_png = occ3d_gt.depth_m_to_png(render.depth_z_m)
            _save_png(root / "truth" / "depth" / channel / f"{basename}.png", depth_png)
            cam2globals.append(cam2global)
            intrinsics.append(k)
            depths.append(occ3d_gt.depth_png_to_m(depth_png))
    render_s = time.perf_counter() - start
    rec = frame.sensors[rig.LIDAR_CHANNEL]
    lidar2ego = sensor_matrix(plan.calibration[rig.LIDAR_CHANNEL])
    scan = world.scan_lidar(rec.ego2global @ lidar2ego, rec.timestamp_us)
    path = root / rec.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    np.column_stack([scan.points_sensor, scan.intensity, scan.ring]).astype(np.float32).tofile(path)
    objects, counts = np.unique(scan.object_id[scan.object_id >= 0], return_counts=True)
    result = {"scene": scene_index, "frame": frame_index, "lidar_points": int(scan.points_sensor.shape[0]),
              "lidar_counts": dict(zip(objects.tolist(), counts.tolist())), "class_pixels": class_pixels,
              "render_s": render_s, "occ_classes": None}
    if frame.is_key_frame:
        semantics = write_keyframe_gts(root / "gts" / plan.name / frame.sample_token / "labels.npz", world,
                                       rec.ego2global, lidar2ego, rec.timestamp_us, scan.points_global,
                                       cam2globals, intrinsics, depths)
        result["occ_classes"] = np.bincount(semantics.reshape(-1), minlength=18)
    result["total_s"] = time.perf_counter() - start
    return result


def write_keyframe_gts(path: Path, world: SceneWorld, ego2global: np.ndarray, lidar2ego: np.ndarray,
                       timestamp_us: int, lidar_points_global: np.ndarray, cam2globals: List[np.ndarray],
                       intrinsics: List[np.ndarray], depths_m: List[np.ndarray]) -> np.ndarray:
    """Occ3D labels.npz of a keyframe (ego frame of its LIDAR_TOP sample_data); returns the semantics."""
    semantics = occ3d_gt.occupancy_semantics(world, ego2global, timestamp_us)
    global2ego = np.linalg.inv(ego2global)
    points_ego = lidar_points_global @ global2ego[:3, :3].T + global2ego[:3, 3]
    mask_lidar = occ3d_gt.traversed_voxels(lidar2ego[:3, 3], points_ego)
    centres_global = occ3d_gt.voxel_centres_ego() @ ego2global[:3, :3].T + ego2global[:3, 3]
    mask_camera = occ3d_gt.camera_visibility_mask(centres_global, cam2globals, intrinsics, depths_m)
    save_labels(path, semantics, mask_lidar, mask_camera)
    return semantics


def _prepare_out_dir(root: Path, version: str) -> None:
    """Refuse to write into a non-empty folder that is not a previous world; clear a previous world's folders."""
    if root.exists() and any(root.iterdir()) and not (root / WORLD_JSON).is_file():
        raise FileExistsError(f"{root} is not empty and holds no synthetic world ({WORLD_JSON} missing); "
                              "choose an empty or new folder")
    for name in GENERATED_DIRS + (version,):
        if (root / name).exists():
            shutil.rmtree(root / name)
    root.mkdir(parents=True, exist_ok=True)


def generate_world(out_dir: Path, config: WorldConfig = WorldConfig(), progress: bool = True) -> Dict:
    """Write the synthetic world into `out_dir` (a nuScenes dataroot) and return a summary dict."""
    start = time.perf_counter()
    root = Path(out_dir).absolute()
    _prepare_out_dir(root, config.version)
    if config.keyframes < 1 or config.sweeps_per_gap < 0 or config.width < 8 or config.height < 8:
        raise ValueError(f"invalid world size: {config}")
    names = scene_names(config.scenes)
    descriptions = [scene_description(name, k, config.seed, config.keyframes, FIRST_TIMESTAMP_US + k * 86_400_000_000,
                                      config.moving_vehicles) for k, name in enumerate(names)]
    worlds = [SceneWorld(d) for d in descriptions]
    plans = [plan_scene(config, k, name, w) for k, (name, w) in enumerate(zip(names, worlds))]
    write_world(root, descriptions, {k: v for k, v in asdict(config).items() if k != "workers"})  # output-neutral
    for plan, world in zip(plans, worlds):
        _save_png(root / "maps" / f"{plan.map_token}.png", map_mask(world.road))

    _STATE.update(root=root, config=config, worlds=worlds, plans=plans)
    tasks = [(k, f.frame_index) for k, plan in enumerate(plans) for f in plan.frames]
    workers = config.workers or os.cpu_count() or 1
    results: List[Dict] = []
    log_every = max(1, len(tasks) // 10)
    pool: Optional[multiprocessing.pool.Pool] = None
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        pool = multiprocessing.get_context("fork").Pool(min(workers, len(tasks)))
    try:
        iterator = pool.imap_unordered(render_frame, tasks) if pool else map(render_frame, tasks)
        for result in iterator:
            results.append(result)
            if progress and (len(results) % log_every == 0 or len(results) == len(tasks)):
                print(f"[selfocc-synth] {len(results)}/{len(tasks)} frames rendered "
                      f"({time.perf_counter() - start:.1f} s)", flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        _STATE.clear()
    results.sort(key=lambda r: (r["scene"], r["frame"]))

    tables = nt.static_tables(config.seed)
    for name in nt.TABLE_NAMES:
        tables.setdefault(name, [])
    for k, (plan, world) in enumerate(zip(plans, worlds)):
        counts = {r["frame"]: r["lidar_counts"] for r in results if r["scene"] == k}
        date = time.strftime("%Y-%m-%d", time.gmtime(plan.frames[0].timestamp_us / 1e6))
        for name, records in nt.scene_tables(config.seed, plan, config.width, config.height, date).items():
            tables[name].extend(records)
        for name, records in nt.annotation_tables(config.seed, plan, world, counts).items():
            tables[name].extend(records)
    nt.write_tables(root / config.version, tables)

    occ = sum(r["occ_classes"] for r in results if r["occ_classes"] is not None)
    pixels = sum(r["class_pixels"] for r in results)
    summary = {
        "out_dir": str(root), "version": config.version, "scenes": names,
        "splits": {n: ("mini_train" if n in MINI_TRAIN else "mini_val") for n in names},
        "keyframes": config.keyframes * len(names), "frames": len(tasks), "images": 6 * len(tasks),
        "image_size": [config.width, config.height],
        "sample_annotations": len(tables["sample_annotation"]), "instances": len(tables["instance"]),
        "ego_speed_mps": {w.name: round(w.ego["speed_mps"], 3) for w in worlds},
        "occupied_classes": {OCC3D_CLASSES[c]: int(occ[c]) for c in range(17) if occ[c] > 0},
        "pixel_classes": {(OCC3D_CLASSES[c] if c < 17 else "sky"): int(pixels[c]) for c in range(18) if pixels[c]},
        "lidar_points_per_sweep": float(np.mean([r["lidar_points"] for r in results])),
        "workers": pool._processes if pool else 1,  # type: ignore[attr-defined]
        "seconds_per_frame": {"cameras": round(float(np.mean([r["render_s"] for r in results])), 3),
                              "total": round(float(np.mean([r["total_s"] for r in results])), 3)},
        "seconds": round(time.perf_counter() - start, 2),
    }
    with open(root / SUMMARY_JSON, "w") as f:
        json.dump(summary, f, indent=2)
    return summary

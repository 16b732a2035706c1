"""The embedded synthetic world: real nuScenes format, exact and mutually consistent truth.

One small world (2 scenes x 3 keyframes x 1 sweep per gap, 160 x 90) is generated per module; the
checks read it back through nuscenes-devkit and pyquaternion (independently of the generator's own
pose code) and compare against the analytic world rebuilt by `load_world`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfocc_ns.data.frames import CAMERA_CHANNELS
from selfocc_ns.data.occ3d import CLASS_ID, OCC3D_RANGE_M, OCC3D_SHAPE, OCC3D_VOXEL_M, load_labels, voxel_centres_m
from selfocc_ns.data.synthetic import WorldConfig, generate_world, load_world, scene_names
from selfocc_ns.data.synthetic import raycast as rc
from selfocc_ns.data.synthetic.sdf import sdf_annular_slab, sdf_box, sdf_cylinder

import nuscenes.nuscenes as nuscenes  # noqa: E402  (a hard dependency: a broken install fails here)
from nuscenes.utils.data_classes import LidarPointCloud  # noqa: E402
from nuscenes.utils.geometry_utils import transform_matrix  # noqa: E402
from nuscenes.utils.splits import mini_train, mini_val  # noqa: E402
from pyquaternion import Quaternion  # noqa: E402

SMALL = WorldConfig(scenes=2, keyframes=3, sweeps_per_gap=1, width=160, height=90, seed=0, workers=2)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_world")
    summary = generate_world(root, SMALL, progress=False)
    print(f"small world generated in {summary['seconds']:.1f} s")
    return root


@pytest.fixture(scope="module")
def nusc(world_dir):
    return nuscenes.NuScenes(version="v1.0-mini", dataroot=str(world_dir), verbose=False)


def record_pose(record: dict) -> np.ndarray:
    return transform_matrix(record["translation"], Quaternion(record["rotation"]))


def sensor_to_global(nusc, sd: dict) -> np.ndarray:
    """sensor -> ego(t of this sample_data) -> global, via the devkit's records."""
    ego = record_pose(nusc.get("ego_pose", sd["ego_pose_token"]))
    return ego @ record_pose(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]))


def truth_depth(world_dir: Path, sd: dict) -> np.ndarray:
    channel = sd["filename"].split("/")[1]
    path = world_dir / "truth" / "depth" / channel / (Path(sd["filename"]).stem + ".png")
    return np.asarray(Image.open(path), dtype=np.float64) / 256.0


def project(points_global: np.ndarray, cam2global: np.ndarray, k: np.ndarray):
    """Camera z and nearest pixel (col, row) of global points."""
    g2c = np.linalg.inv(cam2global)
    cam = points_global @ g2c[:3, :3].T + g2c[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        col = np.floor(k[0, 0] * cam[:, 0] / z + k[0, 2])  # pixel (i, j) covers [j, j + 1) x [i, i + 1)
        row = np.floor(k[1, 1] * cam[:, 1] / z + k[1, 2])
    return z, col, row


def scene_of_sample(nusc, sample: dict) -> str:
    return nusc.get("scene", sample["scene_token"])["name"]


# --------------------------------------------------------------------------------------- format


def test_devkit_loads_every_table_with_consistent_chains(nusc, world_dir):
    assert [s["name"] for s in nusc.scene] == ["scene-0061", "scene-0103"]
    assert "scene-0061" in mini_train and "scene-0103" in mini_val
    assert len(nusc.sample) == 2 * SMALL.keyframes
    for scene in nusc.scene:
        assert scene["nbr_samples"] == SMALL.keyframes
        token, samples = scene["first_sample_token"], []
        while token:
            samples.append(nusc.get("sample", token))
            token = samples[-1]["next"]
        assert len(samples) == SMALL.keyframes and samples[-1]["token"] == scene["last_sample_token"]
        assert np.allclose(np.diff([s["timestamp"] for s in samples]), 500_000)
        for sample in samples:
            assert set(sample["data"]) == set(CAMERA_CHANNELS) | {"LIDAR_TOP"}
        for channel in list(CAMERA_CHANNELS) + ["LIDAR_TOP"]:
            sd = nusc.get("sample_data", samples[0]["data"][channel])
            assert sd["prev"] == ""
            chain = [sd]
            while chain[-1]["next"]:
                chain.append(nusc.get("sample_data", chain[-1]["next"]))
            # keyframe, sweep, keyframe, sweep, keyframe
            assert [c["is_key_frame"] for c in chain] == [True, False, True, False, True]
            assert all(np.diff([c["timestamp"] for c in chain]) > 0)
            for i, c in enumerate(chain):
                assert (world_dir / c["filename"]).is_file()
                # a sweep belongs to the next keyframe's sample, as in nuScenes
                assert c["sample_token"] == samples[(i + 1) // 2]["token"]
                assert c["filename"].startswith("samples/" if c["is_key_frame"] else "sweeps/")
                if i:
                    assert c["prev"] == chain[i - 1]["token"]
            cam_offsets = [abs(c["timestamp"] - s["timestamp"]) for c, s in zip(chain[::2], samples)]
            assert max(cam_offsets) <= 45_000  # cameras fire within ~40 ms of the LiDAR
    assert len(nusc.map) == 2 and nusc.map[0]["mask"].mask().max() == 255


def test_sensors_are_calibrated_like_nuscenes(nusc, world_dir):
    sample = nusc.sample[0]
    front_sd = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
    front = nusc.get("calibrated_sensor", front_sd["calibrated_sensor_token"])
    k = np.array(front["camera_intrinsic"])
    assert k[0, 0] == pytest.approx(1266.4 * SMALL.width / 1600, rel=1e-6)
    assert 0.4 * SMALL.width < k[0, 2] < 0.6 * SMALL.width
    yaws = {}
    for channel in CAMERA_CHANNELS:
        cs = nusc.get("calibrated_sensor", nusc.get("sample_data", sample["data"][channel])["calibrated_sensor_token"])
        optical_axis = Quaternion(cs["rotation"]).rotation_matrix[:, 2]  # camera z in the ego frame
        yaws[channel] = np.degrees(np.arctan2(optical_axis[1], optical_axis[0]))
        assert 1.4 < cs["translation"][2] < 1.7
    assert yaws["CAM_FRONT"] == pytest.approx(0, abs=1e-6)
    assert yaws["CAM_FRONT_LEFT"] == pytest.approx(55, abs=1e-6)
    assert yaws["CAM_BACK_RIGHT"] == pytest.approx(-110, abs=1e-6)
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    lidar = nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
    # LiDAR frame x right, y forward: its y axis is the ego's x axis
    assert np.allclose(Quaternion(lidar["rotation"]).rotation_matrix[:, 1], [1, 0, 0], atol=1e-9)
    raw = np.fromfile(world_dir / lidar_sd["filename"], dtype=np.float32).reshape(-1, 5)
    assert raw.shape[0] > 5000 and set(np.unique(raw[:, 4]).astype(int)) <= set(range(32))
    assert np.linalg.norm(raw[:, :3], axis=1).max() <= 70.0 + 1e-3


def test_annotations_follow_the_objects(nusc):
    cars = [a for a in nusc.sample_annotation if a["category_name"] == "vehicle.car"]
    assert cars and all(1.7 < a["size"][0] < 2.1 and 4.0 < a["size"][1] < 5.0 for a in cars)  # w, l like a car
    moving = [a for a in cars
              if any(nusc.get("attribute", t)["name"] == "vehicle.moving" for t in a["attribute_tokens"])]
    assert moving, "the moving vehicle is annotated"
    first = moving[0]
    assert first["next"], "moving vehicle annotated on consecutive keyframes"
    second = nusc.get("sample_annotation", first["next"])
    speed = np.linalg.norm(np.subtract(second["translation"], first["translation"])[:2]) / 0.5
    assert 5.0 < speed < 11.5
    assert any(a["num_lidar_pts"] > 0 for a in cars)
    # boxes come back through the devkit in the sensor frame, interpolated for sweeps
    sample = nusc.sample[1]
    _, boxes, _ = nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
    assert len(boxes) > 5


# --------------------------------------------------------------------------------------- geometry agreement


def test_lidar_agrees_with_truth_depth_keyframes_and_sweeps(nusc, world_dir):
    world = load_world(world_dir)
    errors = {"keyframe": [], "sweep": []}
    for sample in nusc.sample:
        scene = world[scene_of_sample(nusc, sample)]
        lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        frames = [(lidar_sd, {c: nusc.get("sample_data", sample["data"][c]) for c in CAMERA_CHANNELS}, "keyframe")]
        if lidar_sd["prev"]:
            sweep_cams = {c: nusc.get("sample_data", nusc.get("sample_data", sample["data"][c])["prev"])
                          for c in CAMERA_CHANNELS}
            frames.append((nusc.get("sample_data", lidar_sd["prev"]), sweep_cams, "sweep"))
        for lsd, cams, kind in frames:
            points = LidarPointCloud.from_file(str(world_dir / lsd["filename"])).points[:3].T
            l2g = sensor_to_global(nusc, lsd)
            points_global = points @ l2g[:3, :3].T + l2g[:3, 3]
            for sd in cams.values():
                c2g = sensor_to_global(nusc, sd)
                k = np.array(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
                if kind == "keyframe":
                    depth = truth_depth(world_dir, sd)
                else:  # sweeps have no depth PNG: render the exact truth from the world
                    depth = scene.render_camera(c2g, k, sd["width"], sd["height"], sd["timestamp"]).depth_z_m
                z, col, row = project(points_global, c2g, k)
                ok = (z > 0.5) & (col >= 0) & (col < sd["width"]) & (row >= 0) & (row < sd["height"])
                d = depth[row[ok].astype(int), col[ok].astype(int)]
                errors[kind].append(np.abs(d - z[ok])[d > 0])
    for kind, errs in errors.items():
        err = np.concatenate(errs)
        print(f"LiDAR vs truth depth ({kind}): {err.size} points, median {np.median(err) * 100:.2f} cm")
        assert err.size > 20_000
        assert np.median(err) < 0.05


def test_warping_a_sweep_with_true_depth_explains_the_keyframe(nusc, world_dir):
    warped, unwarped = [], []
    for sample in nusc.sample:
        if not sample["prev"]:
            continue
        for channel in CAMERA_CHANNELS:
            key = nusc.get("sample_data", sample["data"][channel])
            sweep = nusc.get("sample_data", key["prev"])
            assert not sweep["is_key_frame"]
            k = np.array(nusc.get("calibrated_sensor", key["calibrated_sensor_token"])["camera_intrinsic"])
            target = np.asarray(Image.open(world_dir / key["filename"]), dtype=np.float64) / 255.0
            source = np.asarray(Image.open(world_dir / sweep["filename"]), dtype=np.float64) / 255.0
            depth = truth_depth(world_dir, key)
            rows, cols = np.nonzero(depth > 0)
            z = depth[rows, cols]
            cam = np.stack([(cols + 0.5 - k[0, 2]) / k[0, 0] * z, (rows + 0.5 - k[1, 2]) / k[1, 1] * z, z], -1)
            key2sweep = np.linalg.inv(sensor_to_global(nusc, sweep)) @ sensor_to_global(nusc, key)
            q = cam @ key2sweep[:3, :3].T + key2sweep[:3, 3]
            # continuous image coordinates -> pixel-index coordinates (centres at j + 0.5)
            u = k[0, 0] * q[:, 0] / q[:, 2] + k[0, 2] - 0.5
            v = k[1, 1] * q[:, 1] / q[:, 2] + k[1, 2] - 0.5
            h, w = depth.shape
            ok = (q[:, 2] > 0.1) & (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
            u, v, rows, cols = u[ok], v[ok], rows[ok], cols[ok]
            u0, v0 = np.minimum(np.floor(u).astype(int), w - 2), np.minimum(np.floor(v).astype(int), h - 2)
            fu, fv = (u - u0)[:, None], (v - v0)[:, None]
            sampled = (source[v0, u0] * (1 - fu) * (1 - fv) + source[v0, u0 + 1] * fu * (1 - fv)
                       + source[v0 + 1, u0] * (1 - fu) * fv + source[v0 + 1, u0 + 1] * fu * fv)
            warped.append(np.abs(sampled - target[rows, cols]).mean())
            unwarped.append(np.abs(source[rows, cols] - target[rows, cols]).mean())
    reduction = 1.0 - np.mean(warped) / np.mean(unwarped)
    print(f"photometric L1: warped {np.mean(warped):.4f}, not warped {np.mean(unwarped):.4f}, "
          f"reduction {reduction * 100:.1f}%")
    assert reduction >= 0.5


def test_tiled_renderer_matches_brute_force_rays_and_sdf(nusc, world_dir):
    world = load_world(world_dir)
    sample = nusc.sample[1]
    scene = world[scene_of_sample(nusc, sample)]
    for channel in ("CAM_FRONT", "CAM_BACK_LEFT"):
        sd = nusc.get("sample_data", sample["data"][channel])
        c2g = sensor_to_global(nusc, sd)
        k = np.array(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
        render = scene.render_camera(c2g, k, sd["width"], sd["height"], sd["timestamp"])
        # the world rebuilt from JSON reproduces the stored truth exactly
        stored_depth = truth_depth(world_dir, sd)
        assert np.array_equal(np.round(render.depth_z_m * 256) / 256, stored_depth)
        stored_sem = np.asarray(Image.open(world_dir / "semantics" / channel / (Path(sd["filename"]).stem + ".png")))
        assert np.array_equal(render.class_id, stored_sem)
        assert np.array_equal(render.class_id == 17, stored_depth == 0)
        # every pixel against plain per-ray casting over all primitives (no windows, no occlusion skipping)
        rows, cols = np.mgrid[0 : sd["height"], 0 : sd["width"]]
        centres = np.stack([cols + 0.5, rows + 0.5, np.ones_like(cols, dtype=np.float64)], -1)  # pixel centres
        rays = centres.reshape(-1, 3) @ np.linalg.inv(k).T @ c2g[:3, :3].T
        hits = scene.cast_rays(np.broadcast_to(c2g[:3, 3], rays.shape), rays, sd["timestamp"])
        tiled = render.distance_m.reshape(-1)
        both_miss = np.isinf(tiled) & np.isinf(hits.distance_m)
        same_surface = np.isclose(tiled, hits.distance_m, rtol=1e-4, atol=1e-4) | both_miss
        # float32 rays that graze a silhouette may flip between the two paths: allow a handful
        assert (~same_surface).sum() <= 2
        # hit points lie on the zero level set of the SDF
        points = hits.point[np.isfinite(hits.distance_m)]
        assert np.abs(scene.sdf(points, sd["timestamp"])).max() < 1e-3


# --------------------------------------------------------------------------------------- richness


def test_world_is_rich_enough_to_learn_from(nusc, world_dir):
    occupied = set()
    for sample in nusc.sample:
        labels = load_labels(world_dir / "gts" / scene_of_sample(nusc, sample) / sample["token"] / "labels.npz")
        occupied |= set(np.unique(labels["semantics"]).tolist()) - {17}
    required = {CLASS_ID[c] for c in ("car", "driveable_surface", "sidewalk", "manmade", "vegetation")}
    assert required <= occupied and len(occupied) >= 6, occupied
    for scene in nusc.scene:
        sample = nusc.get("sample", scene["first_sample_token"])
        nxt = nusc.get("sample", sample["next"])
        poses = [nusc.get("ego_pose", nusc.get("sample_data", s["data"]["LIDAR_TOP"])["ego_pose_token"])
                 for s in (sample, nxt)]
        speed = np.linalg.norm(np.subtract(poses[1]["translation"], poses[0]["translation"])) / 0.5
        assert 3.0 <= speed <= 15.0


# --------------------------------------------------------------------------------------- Occ3D gts


def independent_mask_camera(nusc, world_dir, sample) -> np.ndarray:
    """mask_camera from the files alone: voxel centres of the LIDAR_TOP ego frame, devkit poses, depth PNGs."""
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    ego2global = record_pose(nusc.get("ego_pose", lidar_sd["ego_pose_token"]))
    xs, ys, zs = voxel_centres_m()
    centres = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), -1).reshape(-1, 3)
    centres_global = centres @ ego2global[:3, :3].T + ego2global[:3, 3]
    seen = np.zeros(centres.shape[0], dtype=bool)
    for channel in CAMERA_CHANNELS:
        sd = nusc.get("sample_data", sample["data"][channel])
        k = np.array(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
        z, col, row = project(centres_global, sensor_to_global(nusc, sd), k)
        depth = truth_depth(world_dir, sd)
        inside = (z > 0) & (col >= 0) & (col < sd["width"]) & (row >= 0) & (row < sd["height"])
        first_hit = np.full(centres.shape[0], np.inf)
        d = depth[row[inside].astype(int), col[inside].astype(int)]
        first_hit[inside] = np.where(d > 0, d, np.inf)
        seen |= inside & (z <= first_hit + OCC3D_VOXEL_M / 2)
    return seen.reshape(OCC3D_SHAPE)


def test_occ3d_gts_have_the_layout_and_masks(nusc, world_dir):
    world = load_world(world_dir)
    for sample in nusc.sample[:4]:
        labels = load_labels(world_dir / "gts" / scene_of_sample(nusc, sample) / sample["token"] / "labels.npz")
        for key in ("semantics", "mask_lidar", "mask_camera"):
            assert labels[key].shape == OCC3D_SHAPE and labels[key].dtype == np.uint8
        assert set(np.unique(labels["mask_camera"])) <= {0, 1} and set(np.unique(labels["mask_lidar"])) <= {0, 1}
        expected = independent_mask_camera(nusc, world_dir, sample)
        mismatch = int((labels["mask_camera"].astype(bool) != expected).sum())
        assert mismatch == 0, f"{mismatch} voxels differ"
        assert 0.02 < expected.mean() < 0.6

        # The ground surface (z = 0) occupies the voxel row centred at z = 0 and everything below.
        z_row = round((0.0 - OCC3D_RANGE_M[2]) / OCC3D_VOXEL_M - 0.5)
        sem = labels["semantics"]
        assert (sem[:, :, : z_row + 1] != 17).mean() > 0.99
        # Every LiDAR return lies in a traversed voxel, and mostly in an occupied one of the class it hit.
        lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        pts = LidarPointCloud.from_file(str(world_dir / lidar_sd["filename"])).points[:3].T
        l2e = record_pose(nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"]))
        ego = pts @ l2e[:3, :3].T + l2e[:3, 3]
        idx = np.floor((ego - np.array(OCC3D_RANGE_M[:3])) / OCC3D_VOXEL_M).astype(int)
        inside = np.all((idx >= 0) & (idx < np.array(OCC3D_SHAPE)), axis=1)
        idx = idx[inside]
        assert labels["mask_lidar"][tuple(idx.T)].all()
        assert (sem[tuple(idx.T)] != 17).mean() > 0.97
        # Occupancy equals thresholding the world's own SDF at the voxel centres (spot check).
        ego2global = record_pose(nusc.get("ego_pose", lidar_sd["ego_pose_token"]))
        rng = np.random.default_rng(0)
        pick = rng.integers(0, np.array(OCC3D_SHAPE), size=(3000, 3))
        pick = np.concatenate([pick, np.argwhere(sem != 17)[rng.integers(0, (sem != 17).sum(), 3000)]])
        xs, ys, zs = voxel_centres_m()
        centres = np.stack([xs[pick[:, 0]], ys[pick[:, 1]], zs[pick[:, 2]]], -1)
        sdf, cls = world[scene_of_sample(nusc, sample)].sdf_and_class(
            centres @ ego2global[:3, :3].T + ego2global[:3, 3], lidar_sd["timestamp"])
        assert np.array_equal(np.where(sdf <= OCC3D_VOXEL_M / 2, cls, 17), sem[tuple(pick.T)])


# --------------------------------------------------------------------------------------- primitives


def test_primitive_intersections_and_sdfs_on_known_geometry():
    def ray(d):
        d = np.asarray(d, dtype=np.float32)[None]
        return d[:, 0], d[:, 1], d[:, 2]

    # box 4 x 2 x 2 yawed 90 deg at the origin: seen from x = -10 along +x its face is at x = -1
    assert rc.intersect_box(np.array([-10.0, 0, 0]), *ray([1, 0, 0]), np.pi / 2, [2.0, 1.0, 1.0])[0] == pytest.approx(9)
    assert np.isinf(rc.intersect_box(np.array([-10.0, 0, 0]), *ray([0, 1, 0]), 0.0, [2.0, 1.0, 1.0])[0])
    # vertical cylinder r = 0.5, height 2: side from the side, cap from above
    assert rc.intersect_cylinder(np.array([-3.0, 0, 0]), *ray([1, 0, 0]), 0.5, 1.0)[0] == pytest.approx(2.5)
    assert rc.intersect_cylinder(np.array([0.2, 0, 5.0]), *ray([0, 0, -1]), 0.5, 1.0)[0] == pytest.approx(4.0)
    assert rc.intersect_sphere(np.array([0, 0, 7.0]), *ray([0, 0, -1]), 2.0)[0] == pytest.approx(5.0)
    # annulus 10..12 m, 0.15 high: from the centre at z = 1 looking along +x it meets the inner wall? No:
    # the ray at z = 1 passes above; a ray going down at 45 deg from (0, 0, 1) lands on the top at r = 0.85 + ...
    slab = rc.AnnularSlab(10.0, 12.0, 0.15, 0.0, 1.0)
    d = np.array([1.0, 0.0, -0.0849], dtype=np.float32)
    d /= np.linalg.norm(d)
    t = rc.intersect_annular_slab(np.array([0.0, 0.0, 1.0]), *ray(d), slab)[0]
    hit = np.array([0.0, 0.0, 1.0]) + t * d
    assert 10.0 <= np.hypot(hit[0], hit[1]) <= 12.0 and hit[2] == pytest.approx(0.15, abs=1e-4)
    # grazing the inner wall from inside, below the top: t where r = 10
    t = rc.intersect_annular_slab(np.array([0.0, 0.0, 0.1]), *ray([1, 0, 0]), slab)[0]
    assert t == pytest.approx(10.0)
    # SDFs: exact Euclidean distances
    assert sdf_box(np.array([[3.0, 0, 0]]), 0.0, [1.0, 1.0, 1.0])[0] == pytest.approx(2.0)
    assert sdf_box(np.array([[2.0, 2.0, 0]]), 0.0, [1.0, 1.0, 1.0])[0] == pytest.approx(np.sqrt(2))
    assert sdf_box(np.array([[0.0, 0.0, 0.5]]), 0.3, [1.0, 1.0, 1.0])[0] == pytest.approx(-0.5)
    assert sdf_cylinder(np.array([[0.0, 2.0, 0.0]]), 0.5, 1.0)[0] == pytest.approx(1.5)
    assert sdf_annular_slab(np.array([[11.0, 0.0, 1.15]]), slab)[0] == pytest.approx(1.0)
    assert sdf_annular_slab(np.array([[9.0, 0.0, 0.15]]), slab)[0] == pytest.approx(1.0)


def test_world_sdf_is_a_distance_field(world_dir):
    scene = load_world(world_dir)["scene-0061"]
    t = scene.ego["t0_us"]
    ego = scene.ego_pose(t)
    rng = np.random.default_rng(1)
    points = (rng.uniform([-30, -15, 0.3], [30, 15, 6], size=(400, 3)) @ ego[:3, :3].T) + ego[:3, 3]
    sdf = scene.sdf(points, t)
    eps = 1e-4
    grad = np.stack([(scene.sdf(points + eps * e, t) - scene.sdf(points - eps * e, t)) / (2 * eps)
                     for e in np.eye(3)], -1)
    outside = sdf > 0.05
    assert outside.mean() > 0.5
    assert np.allclose(np.linalg.norm(grad[outside], axis=-1), 1.0, atol=1e-3)
    # no ray from a point meets a surface closer than the SDF says ...
    for direction in (-grad[outside], rng.normal(size=(outside.sum(), 3))):
        hits = scene.cast_rays(points[outside], direction, t)
        assert np.all(hits.distance_m >= sdf[outside] - 2e-3)
    # ... and along -gradient it meets one exactly there (rays aimed exactly at an edge may slip past it)
    hits = scene.cast_rays(points[outside], -grad[outside], t)
    assert np.isclose(hits.distance_m, sdf[outside], atol=2e-3).mean() > 0.97


# --------------------------------------------------------------------------------------- config, CLI, determinism


def test_scene_names_follow_the_official_mini_splits():
    assert scene_names(2) == ["scene-0061", "scene-0103"]
    names = scene_names(5)
    assert sum(n in mini_val for n in names) >= 1 and all(n in mini_train + mini_val for n in names)
    assert len(set(scene_names(10))) == 10
    with pytest.raises(ValueError):
        scene_names(11)


def test_cli_parses_the_documented_flags(tmp_path):
    import tyro

    from selfocc_ns.scripts.synth import SynthCommand

    cmd = tyro.cli(SynthCommand, args=[str(tmp_path / "w"), "--scenes", "3", "--keyframes", "4", "--sweeps-per-gap",
                                       "0", "--width", "64", "--height", "36", "--seed", "5", "--quiet"])
    assert cmd.out_dir == tmp_path / "w" and cmd.quiet
    assert (cmd.world.scenes, cmd.world.keyframes, cmd.world.sweeps_per_gap) == (3, 4, 0)
    assert (cmd.world.width, cmd.world.height, cmd.world.seed) == (64, 36, 5)


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no synthetic world"):
        generate_world(tmp_path, WorldConfig(scenes=1, keyframes=1, sweeps_per_gap=0, width=32, height=18),
                       progress=False)


def test_same_seed_same_world_whatever_the_worker_count(tmp_path):
    tiny = dict(scenes=1, keyframes=2, sweeps_per_gap=1, width=64, height=36, seed=3)
    a, b = tmp_path / "a", tmp_path / "b"
    generate_world(a, WorldConfig(**tiny, workers=1), progress=False)
    generate_world(b, WorldConfig(**tiny, workers=2), progress=False)
    report = Path("truth") / "summary.json"  # timings and paths: a report about the run, not world data
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.relative_to(a) != report)
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.relative_to(b) != report)
    assert len(files_a) > 40
    for rel in files_a:
        if rel.suffix == ".json":
            assert json.loads((a / rel).read_text()) == json.loads((b / rel).read_text()), rel
        elif rel.suffix in (".jpg", ".png"):
            assert np.array_equal(np.asarray(Image.open(a / rel)), np.asarray(Image.open(b / rel))), rel
        elif rel.suffix == ".npz":
            with np.load(a / rel) as x, np.load(b / rel) as y:
                assert all(np.array_equal(x[k], y[k]) for k in x.files), rel
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    other = tmp_path / "c"
    generate_world(other, WorldConfig(**dict(tiny, seed=4), workers=1), progress=False)
    layouts = [json.loads((root / "truth" / "world.json").read_text())["scenes"] for root in (a, other)]
    assert layouts[0] != layouts[1]

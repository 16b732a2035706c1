"""The viewer without a browser: camera conversion, renders against the model's own, layers, controls.

The browser test (`test_viewer_browser.py`) drives the same code through ns-viewer and chromium.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from scipy.spatial.transform import Rotation

from selfocc_ns.data.occ3d import FREE_ID, OCC3D_PALETTE, OCC3D_SHAPE
from selfocc_ns.viewer.render import (
    VISER_NERFSTUDIO_SCALE_RATIO,
    ViewerWorld,
    ego_point_in_nerfstudio,
    move_with_ego,
    viewer_camera_in_ego,
)
from selfocc_ns.viewer.scene import VoxelField, predicted_layer, visible_surface, voxel_layer

# OpenCV camera axes in nuScenes ego axes for a camera looking forward (x right = -y_ego, y down = -z_ego).
FORWARD_OPENCV = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def random_pose(rng: np.random.Generator, translation_scale: float) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = Rotation.random(random_state=int(rng.integers(1 << 31))).as_matrix()
    pose[:3, 3] = rng.normal(size=3) * translation_scale
    return pose


def random_world(rng: np.random.Generator) -> ViewerWorld:
    transform = random_pose(rng, 300.0)[:3]
    return ViewerWorld(transform, scale=float(rng.uniform(0.005, 0.5)))


def pinhole(c2w_ns: np.ndarray, height: int = 90, width: int = 160, focal: float = 100.0) -> Cameras:
    return Cameras(
        fx=focal, fy=focal * 1.1, cx=width / 2.0, cy=height / 2.0 + 3.0, width=width, height=height,
        camera_to_worlds=torch.from_numpy(np.asarray(c2w_ns)[:3]).float()[None],
    )


# -- frames ----------------------------------------------------------------------------------------------


def test_scale_ratio_is_nerfstudios():
    from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO as nerfstudio_ratio

    assert VISER_NERFSTUDIO_SCALE_RATIO == nerfstudio_ratio


def test_world_inverts_the_dataparser_like_nerfstudio():
    """global_from_nerfstudio == nerfstudio's transform_poses_to_original_space (OpenGL), and it inverts."""
    rng = np.random.default_rng(0)
    world = random_world(rng)
    outputs = DataparserOutputs(
        image_filenames=[], cameras=None, dataparser_transform=torch.from_numpy(world.transform).float(),
        dataparser_scale=world.scale,
    )
    poses_ns = np.stack([random_pose(rng, 1.0)[:3] for _ in range(5)])
    expected = outputs.transform_poses_to_original_space(torch.from_numpy(poses_ns).float(), camera_convention="opengl")
    got = world.global_from_nerfstudio(poses_ns)
    np.testing.assert_allclose(got[:, :3], expected.double().numpy(), atol=2e-3)  # float32 at ~300 m
    np.testing.assert_allclose(world.nerfstudio_from_global(got), np.concatenate([poses_ns, got[:, 3:]], 1), atol=1e-9)


def test_camera_at_the_ego_origin_maps_to_the_ego_pose():
    """A nerfstudio camera built by hand at the ego origin (+2 m ahead, +1.5 m up) looking forward."""
    rng = np.random.default_rng(1)
    world, ego2global = random_world(rng), random_pose(rng, 200.0)
    cam_in_ego = np.eye(4)
    cam_in_ego[:3, :3] = FORWARD_OPENCV @ np.diag([1.0, -1.0, -1.0])  # OpenGL axes: y up, z backwards
    cam_in_ego[:3, 3] = [2.0, 0.0, 1.5]
    cam2global = ego2global @ cam_in_ego
    c2w_ns = np.eye(4)
    c2w_ns[:3, :3] = world.transform[:3, :3] @ cam2global[:3, :3]
    c2w_ns[:3, 3] = world.scale * (world.transform[:3, :3] @ cam2global[:3, 3] + world.transform[:3, 3])

    view = viewer_camera_in_ego(pinhole(c2w_ns), world, ego2global)
    np.testing.assert_allclose(view.cam2ego[:3, :3].numpy(), FORWARD_OPENCV, atol=1e-5)
    np.testing.assert_allclose(view.cam2ego[:3, 3].numpy(), [2.0, 0.0, 1.5], atol=1e-3)
    np.testing.assert_allclose(view.intrinsics.numpy(), [[100.0, 0, 80.0], [0, 110.0, 48.0], [0, 0, 1]], atol=1e-4)
    assert view.image_hw == (90, 160)


def test_identity_camera_sits_at_the_normalised_origin():
    """c2w = [I | 0] is the global point p with transform @ [p; 1] = 0, seen from the ego frame."""
    rng = np.random.default_rng(2)
    world, ego2global = random_world(rng), random_pose(rng, 200.0)
    view = viewer_camera_in_ego(pinhole(np.eye(4)), world, ego2global)
    origin_global = np.linalg.solve(world.transform[:, :3], -world.transform[:, 3])
    origin_ego = np.linalg.solve(ego2global, np.append(origin_global, 1.0))[:3]
    np.testing.assert_allclose(view.cam2ego[:3, 3].numpy(), origin_ego, atol=1e-3)
    rotation_gl = np.linalg.inv(ego2global[:3, :3]) @ world.transform[:, :3].T
    np.testing.assert_allclose(view.cam2ego[:3, :3].numpy(), rotation_gl @ np.diag([1.0, -1.0, -1.0]), atol=1e-5)


def test_points_follow_the_ego_and_the_initial_view_is_behind_and_above():
    rng = np.random.default_rng(3)
    world, old, new = random_world(rng), random_pose(rng, 100.0), random_pose(rng, 100.0)
    ahead_of_old = ego_point_in_nerfstudio(world, old, (5.0, 1.0, 2.0))
    ahead_of_new = ego_point_in_nerfstudio(world, new, (5.0, 1.0, 2.0))
    np.testing.assert_allclose(move_with_ego(world, ahead_of_old, old, new), ahead_of_new, atol=1e-9)
    # the viser pose of the ego node maps ego points exactly as the point transform does
    wxyz, position = world.viser_from_global(new)
    rotation = Rotation.from_quat([*wxyz[1:], wxyz[0]]).as_matrix()
    point_ego = np.array([-22.0, 0.0, 14.0])
    np.testing.assert_allclose(rotation @ (point_ego * world.viser_units_per_metre) + position,
                               ego_point_in_nerfstudio(world, new, point_ego) * world.viser_ratio, atol=1e-6)


# -- layers ------------------------------------------------------------------------------------------------


def test_visible_surface_of_known_solids():
    cube = torch.zeros(6, 6, 6, dtype=torch.bool)
    cube[1:5, 1:5, 1:5] = True
    assert int(visible_surface(cube).sum()) == 4**3 - 2**3
    # a full grid: its shell without the underside (outside is free at the sides and on top, occupied below)
    full = visible_surface(torch.ones(6, 6, 6, dtype=torch.bool))
    assert int(full.sum()) == 6**3 - 4 * 4 * 5 and not bool(full[1:5, 1:5, :5].any())
    slab = torch.zeros(6, 6, 6, dtype=torch.bool)
    slab[:, :, :2] = True
    surface = visible_surface(slab)
    # the top layer, plus the bottom layer only on the grid's border ring
    assert int(surface.sum()) == 36 + 20 and bool(surface[:, :, 1].all()) and not bool(surface[1:5, 1:5, 0].any())


def test_voxel_layer_positions_colours_and_class_filter():
    grid = torch.full(OCC3D_SHAPE, FREE_ID, dtype=torch.uint8)
    grid[100, 100, 2] = 4  # a car voxel: centre (0.2, 0.2, 0.0) m
    grid[0, 199, 15] = 15  # manmade in a corner: centre (-39.8, 39.8, 5.2) m
    layer = voxel_layer(grid)
    order = np.argsort(layer.classes)
    np.testing.assert_allclose(layer.points_m[order], [[0.2, 0.2, 0.0], [-39.8, 39.8, 5.2]], atol=1e-5)
    np.testing.assert_array_equal(layer.colours[order], OCC3D_PALETTE[[4, 15]])
    hidden = voxel_layer(grid, shown_classes=[0, 15])
    assert hidden.classes.tolist() == [15]


def test_predicted_layer_follows_the_threshold():
    """A ground-plane SDF (z): voxel centres at z = -0.8, -0.4, 0.0, ... are occupied up to the threshold;
    inside the grid only the top occupied layer is visible, on its border ring (796 columns) every layer."""
    from selfocc_ns.metrics.occupancy import clean_query_points

    sdf = clean_query_points()[..., 2]
    field = VoxelField(sdf, torch.full(OCC3D_SHAPE, 11, dtype=torch.long))
    low, high = predicted_layer(field, -0.2), predicted_layer(field, 0.2)
    assert len(low.points_m) == 200 * 200 + 796 and len(high.points_m) == 200 * 200 + 2 * 796
    for layer, top_z_m in ((low, -0.4), (high, 0.0)):
        inner = np.abs(layer.points_m[:, :2]).max(axis=1) < 39.7
        assert inner.sum() == 198 * 198
        np.testing.assert_allclose(np.unique(layer.points_m[inner, 2]), [top_z_m], atol=1e-5)
    assert set(high.classes.tolist()) == {11}
    assert len(predicted_layer(field, -1.5).points_m) == 0


# -- on the tiny checkpoint ----------------------------------------------------------------------------------


@pytest.fixture()
def pipeline(tiny_pipeline):
    """The session pipeline (eval mode, viewer attached)."""
    return tiny_pipeline


def dataset_camera(outputs, image_path) -> Cameras:
    """The dataparser's camera of one image (found by its file name, not by the ordering)."""
    return outputs.cameras[[str(p) for p in outputs.image_filenames].index(str(image_path))]


def test_pipeline_carries_the_viewer_elements_and_no_parameters(pipeline):
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerControl, ViewerElement

    paths = {path for path, _ in parse_object(pipeline, ViewerElement, "Custom Elements")}
    for name in ("sample_scene", "sample_scene_keyframe", "sdf_threshold", "show_occupancy", "show_ground_truth",
                 "show_lidar", "show_cameras", "shown_classes/class_04"):
        assert f"Custom Elements/selfocc/{name}" in paths
    controls = [path for path, _ in parse_object(pipeline, ViewerControl, "Custom Elements")]
    assert controls == ["Custom Elements/selfocc/control"]
    assert not any(key.startswith("selfocc") for key in pipeline.state_dict())


def test_dataset_camera_renders_like_the_models_own_depth(pipeline):
    """Train camera -> ego frame of its keyframe == the batch's cam2ego; the viewer render == render_depth."""
    from selfocc_ns.data.dataset import collate_samples
    from selfocc_ns.viewer.render import render_ego_camera
    from selfocc_ns.viewer.samples import encode_sample

    dm, model = pipeline.datamanager, pipeline.model
    world = ViewerWorld.from_dataparser_outputs(dm.train_dataparser_outputs)
    sample = 1
    batch = collate_samples([dm.make_dataset("train", "eval")[(sample, 0, 0)]])
    frame = dm.train_index.sample_frame(sample)
    grid = encode_sample(model, batch)
    for c, channel in enumerate(dm.train_index.cameras):
        camera = dataset_camera(dm.train_dataparser_outputs, frame.cameras[channel].image_path)
        view = viewer_camera_in_ego(camera, world, frame.ref_ego2global)
        torch.testing.assert_close(view.cam2ego, batch.anchor_cam2ego[0, c], atol=1e-4, rtol=0)
    view = viewer_camera_in_ego(dataset_camera(dm.train_dataparser_outputs, frame.cameras["CAM_BACK"].image_path),
                                world, frame.ref_ego2global)
    crop_hw = tuple(batch.anchor_images.shape[-2:])  # the top 768/900 of the image
    c = dm.train_index.cameras.index("CAM_BACK")
    ours = render_ego_camera(model, grid, view).depth[0, 0, : crop_hw[0], :, 0]
    theirs = model.render_depth(grid, batch.anchor_intrinsics[:, c : c + 1], batch.anchor_cam2ego[:, c : c + 1],
                                crop_hw, lattice_fraction=1.0).depth[0, 0, ..., 0]
    assert ours.shape == theirs.shape == crop_hw
    assert float(theirs.std()) > 0.5  # a real depth map, not a constant
    assert float((ours - theirs).abs().median()) < 1e-4
    assert float((ours - theirs).abs().max()) < 0.05


def test_viewer_render_of_an_eval_camera(pipeline):
    """The full viewer path: an eval camera placed in the viewer's (train split's) world, rendered from the
    selected eval sample, gives the model's own render of that camera (distance along the ray, metres)."""
    dm, model, viewer = pipeline.datamanager, pipeline.model, pipeline.selfocc
    sample = viewer.select(2)
    train_world = ViewerWorld.from_dataparser_outputs(dm.train_dataparser_outputs)
    eval_world = ViewerWorld.from_dataparser_outputs(dm.eval_dataparser_outputs)
    assert not np.allclose(train_world.transform, eval_world.transform)  # the two splits are normalised apart
    eval_camera = dataset_camera(dm.eval_dataparser_outputs, sample.frame.cameras["CAM_FRONT"].image_path)
    c2w_global = eval_world.global_from_nerfstudio(eval_camera.camera_to_worlds.double().numpy())
    camera = Cameras(fx=eval_camera.fx, fy=eval_camera.fy, cx=eval_camera.cx, cy=eval_camera.cy,
                     width=eval_camera.width, height=eval_camera.height,
                     camera_to_worlds=torch.from_numpy(train_world.nerfstudio_from_global(c2w_global)[:3]).float())

    outputs = model.get_outputs_for_camera(camera)  # through the viewer's hook
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "rgb": (90, 160, 3), "depth": (90, 160, 1), "depth_m": (90, 160, 1), "accumulation": (90, 160, 1),
        "semantics": (90, 160, 3)}
    k = sample.frame.cameras["CAM_FRONT"].intrinsics
    cam2ego = np.linalg.inv(sample.frame.ref_ego2global) @ sample.frame.cameras["CAM_FRONT"].cam2global
    ref = model.render_depth(sample.grid, torch.tensor(k, dtype=torch.float32)[None, None],
                             torch.tensor(cam2ego, dtype=torch.float32)[None, None], (90, 160), lattice_fraction=1.0)
    surface = ref.accumulation[0, 0] >= 0.5
    assert float(surface.float().mean()) > 0.2
    err = (outputs["depth_m"] - ref.ray_distance[0, 0])[surface].abs()
    assert float(err.median()) < 1e-3 and float(err.max()) < 0.05
    torch.testing.assert_close(outputs["depth"], outputs["depth_m"] * train_world.scale)
    torch.testing.assert_close(outputs["rgb"], ref.rgb[0, 0].clamp(0, 1), atol=2e-3, rtol=0)
    assert float(outputs["rgb"].std()) > 0.01


def test_viewer_of_a_lidar_frame_model_draws_in_the_ego_frame(pipeline):
    """With reference_frame 'lidar' the sample's grid lives in the LIDAR_TOP frame: the LiDAR layer is still
    drawn in the ego frame (the same points as an ego-frame sample), and a viewer camera renders like the model
    rendering that camera's LiDAR-frame pose (ego2ref @ cam2ego)."""
    dm, model, viewer = pipeline.datamanager, pipeline.model, pipeline.selfocc
    ego_sample = viewer.select(2)
    dm.config.reference_frame = "lidar"
    try:
        sample = viewer.select(2, follow=False)
        ego2ref = sample.ego2ref
        torch.testing.assert_close(ego2ref.double(), torch.from_numpy(np.linalg.inv(sample.frame.lidar2ego)),
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(sample.lidar_m, ego_sample.lidar_m, atol=1e-3, rtol=0)
        world = ViewerWorld.from_dataparser_outputs(dm.train_dataparser_outputs)
        camera = dataset_camera(dm.eval_dataparser_outputs, sample.frame.cameras["CAM_FRONT"].image_path)
        eval_world = ViewerWorld.from_dataparser_outputs(dm.eval_dataparser_outputs)
        c2w_global = eval_world.global_from_nerfstudio(camera.camera_to_worlds.double().numpy())
        camera = Cameras(fx=camera.fx, fy=camera.fy, cx=camera.cx, cy=camera.cy, width=camera.width,
                         height=camera.height,
                         camera_to_worlds=torch.from_numpy(world.nerfstudio_from_global(c2w_global)[:3]).float())
        outputs = model.get_outputs_for_camera(camera)
        k = torch.tensor(sample.frame.cameras["CAM_FRONT"].intrinsics, dtype=torch.float32)
        cam2ego = np.linalg.inv(sample.frame.ref_ego2global) @ sample.frame.cameras["CAM_FRONT"].cam2global
        cam2ref = ego2ref @ torch.tensor(cam2ego, dtype=torch.float32)
        ref = model.render_depth(sample.grid, k[None, None], cam2ref[None, None], (90, 160), lattice_fraction=1.0)
        surface = ref.accumulation[0, 0] >= 0.5
        err = (outputs["depth_m"] - ref.ray_distance[0, 0])[surface].abs()
        assert float(surface.float().mean()) > 0.1 and float(err.median()) < 1e-3
    finally:
        dm.config.reference_frame = "ego"
        viewer.select(2, follow=False)


def test_sample_switching_reencodes_only_on_change(pipeline, monkeypatch):
    import selfocc_ns.viewer.controls as viewer_module

    viewer = pipeline.selfocc
    calls = []
    real_encode = viewer_module.encode_sample
    monkeypatch.setattr(viewer_module, "encode_sample",
                        lambda model, batch: calls.append(batch.sample_tokens[0]) or real_encode(model, batch))
    first = viewer.select(0)
    camera = pinhole(np.eye(4), height=12, width=20)
    viewer.render(camera), viewer.render(camera)
    assert len(calls) == 1 and viewer.sample is first  # renders reuse the cached grid

    labels = viewer._catalogue.labels(viewer.sample_scene.value)
    viewer.sample_scene_keyframe.value = labels[3]
    viewer._on_keyframe(viewer.sample_scene_keyframe)
    assert viewer.sample.index == viewer._catalogue.sample_index(viewer.sample_scene.value, labels[3])
    assert len(calls) == 2 and calls[-1] == viewer.sample.frame.sample_token
    viewer._on_keyframe(viewer.sample_scene_keyframe)  # same keyframe again: nothing to do
    assert len(calls) == 2
    assert not torch.equal(first.voxels.sdf_m, viewer.sample.voxels.sdf_m)  # another sample, another field


class FakeHandle(SimpleNamespace):
    def remove(self):
        self.removed = True


class FakeScene:
    """Records what the layers add to viser's scene."""

    def __init__(self):
        self.nodes = {}

    def _add(self, kind, name, **kwargs):
        self.nodes[name] = FakeHandle(kind=kind, name=name, visible=kwargs.pop("visible", True), **kwargs)
        return self.nodes[name]

    def add_frame(self, name, **kw):
        return self._add("frame", name, **kw)

    def add_box(self, name, **kw):
        return self._add("box", name, **kw)

    def add_point_cloud(self, name, **kw):
        return self._add("points", name, **kw)

    def add_camera_frustum(self, name, **kw):
        return self._add("frustum", name, **kw)


def fake_viewer():
    server = SimpleNamespace(scene=FakeScene(), on_client_connect=lambda cb: None, get_clients=lambda: {},
                             get_port=lambda: 7007)
    return SimpleNamespace(viser_server=server, step=0, trainer=None, _trigger_rerender=lambda: None,
                           control_panel=SimpleNamespace(_max_res=SimpleNamespace(value=512)),
                           config=SimpleNamespace(websocket_port=None, websocket_port_default=7007),
                           viewer_info=["Viewer running locally at: http://localhost:7007"])


def test_layers_are_drawn_in_the_ego_frame_and_toggle(pipeline):
    from selfocc_ns.data.occ3d import OCC3D_VOXEL_M
    from selfocc_ns.viewer import ViewerSettings, attach_viewer

    viewer = attach_viewer(pipeline, ViewerSettings(show_layers=("occupancy", "ground_truth", "lidar", "cameras")))
    fake = fake_viewer()
    viewer.control._setup(fake)
    nodes = fake.viser_server.scene.nodes
    assert fake.control_panel._max_res.value == 256  # CPU default
    sample = viewer.sample
    world = viewer.world()
    units = world.viser_units_per_metre
    wxyz, position = world.viser_from_global(sample.frame.ref_ego2global)
    np.testing.assert_allclose(nodes["/selfocc"].wxyz, wxyz)
    np.testing.assert_allclose(nodes["/selfocc"].position, position)
    assert {"/selfocc/occupancy", "/selfocc/ground_truth", "/selfocc/lidar", "/selfocc/cameras"} <= set(nodes)
    assert sum(1 for n in nodes if n.startswith("/selfocc/cameras/CAM_")) == 6
    assert nodes["/selfocc/occupancy"].point_size == pytest.approx(OCC3D_VOXEL_M * units)
    # ground truth drawn from labels.npz, in metres x units: the visible surface of the non-free voxels
    gt = voxel_layer(sample.gt_classes)
    np.testing.assert_allclose(nodes["/selfocc/ground_truth"].points, gt.points_m * units, rtol=1e-6)
    lidar = nodes["/selfocc/lidar"].points / units
    assert np.median(np.linalg.norm(lidar[:, :2], axis=1)) < 40.0  # in the ego frame, around the vehicle
    front = nodes["/selfocc/cameras/CAM_FRONT"]
    cam2ego = np.linalg.inv(sample.frame.ref_ego2global) @ sample.frame.cameras["CAM_FRONT"].cam2global
    np.testing.assert_allclose(front.position, cam2ego[:3, 3] * units, atol=1e-6)
    assert front.image.shape[0] == 100

    viewer.show_occupancy.cb_hook(SimpleNamespace(value=False))
    assert nodes["/selfocc/occupancy"].visible is False
    count = len(nodes["/selfocc/occupancy"].points)
    viewer.shown_classes.checkbox(11).default_value = False  # hide driveable surface
    viewer.update_voxels()
    assert len(nodes["/selfocc/occupancy"].points) < count
    assert not (predicted_layer(sample.voxels, 0.0, viewer.shown_classes.shown()).classes == 11).any()
    viewer.sdf_threshold.default_value = -1.0
    viewer.update_voxels()
    assert len(nodes["/selfocc/occupancy"].points) != count


def test_model_without_viewer_renders_black(pipeline):
    """Without a camera-render hook the model answers nerfstudio cameras with black images of their size."""
    model = pipeline.model
    model.set_camera_render_hook(None)
    try:
        outputs = model.get_outputs_for_camera(pinhole(np.eye(4), height=8, width=10))
    finally:
        model.set_camera_render_hook(pipeline.selfocc.render)
    assert outputs["rgb"].shape == (8, 10, 3) and float(outputs["rgb"].abs().sum()) == 0.0
    assert outputs["depth"].shape == (8, 10, 1)


class FakeCamera:
    """A viser camera handle: the position is unknown until the browser reports it."""

    def __init__(self, known: bool):
        self.known, self.callbacks, self.sent = known, [], {}

    @property
    def position(self):
        if not self.known:
            raise AssertionError("camera not reported yet")
        return np.zeros(3)

    @position.setter
    def position(self, value):
        self.sent["position"] = np.asarray(value)

    def _record(key):
        return property(lambda self: np.zeros(3), lambda self, value: self.sent.__setitem__(key, np.asarray(value)))

    look_at = _record("look_at")
    up_direction = _record("up")

    def on_update(self, callback):
        self.callbacks.append(callback)


def test_new_browser_tabs_start_behind_and_above_the_ego(pipeline):
    import contextlib

    from selfocc_ns.viewer import attach_viewer

    viewer = attach_viewer(pipeline)
    viewer.control._setup(fake_viewer())
    ego2global, world = viewer.sample.frame.ref_ego2global, viewer.world()
    early = SimpleNamespace(client_id=1, camera=FakeCamera(known=True), atomic=contextlib.nullcontext)
    late = SimpleNamespace(client_id=2, camera=FakeCamera(known=False), atomic=contextlib.nullcontext)
    viewer._on_client(early)
    viewer._on_client(late)
    assert "position" in early.camera.sent and not late.camera.sent  # posed now / when its camera is known
    late.camera.known = True
    late.camera.callbacks[0](late.camera)
    for client in (early, late):
        sent = client.camera.sent
        global_from_viser = np.linalg.inv(np.vstack([world.transform, [0, 0, 0, 1]]))
        to_ego = np.linalg.inv(ego2global) @ global_from_viser
        position_ego = (to_ego @ np.append(sent["position"] / world.viser_units_per_metre, 1.0))[:3]
        look_at_ego = (to_ego @ np.append(sent["look_at"] / world.viser_units_per_metre, 1.0))[:3]
        np.testing.assert_allclose(position_ego, viewer.settings.initial_position_m, atol=1e-6)
        np.testing.assert_allclose(look_at_ego, viewer.settings.initial_look_at_m, atol=1e-6)
        assert position_ego[0] < 0 and position_ego[2] > 5  # behind and above
        np.testing.assert_allclose(sent["up"], world.transform[:, :3] @ ego2global[:3, 2], atol=1e-9)
    late.camera.sent.clear()
    late.camera.callbacks[0](late.camera)
    assert not late.camera.sent  # only the first report poses the camera


def test_training_viewer_refreshes_the_cached_grid_every_n_steps(pipeline):
    from selfocc_ns.viewer import ViewerSettings, attach_viewer

    viewer = attach_viewer(pipeline, ViewerSettings(refresh_every_steps=10))
    training = fake_viewer()
    training.trainer = object()
    viewer.control._setup(training)
    first = viewer.sample
    training.step = 9
    assert viewer.ensure_sample() is first
    training.step = 10
    refreshed = viewer.ensure_sample()
    assert refreshed is not first and refreshed.index == first.index and refreshed.encoded_at_step == 10
    torch.testing.assert_close(refreshed.grid.values, first.grid.values)  # same weights: same field

"""The SelfOcc viewer: sample selector, cached field grid, free-viewpoint renders and occupancy layers.

`attach_viewer(pipeline)` (called by `SelfOccPipeline.__init__`) adds `pipeline.selfocc`, an
`OccupancyViewer`: an `nn.Module` without parameters or buffers (checkpoints are unchanged), so
nerfstudio's `parse_object` walks into it and installs its ViewerElements under "Custom Elements/selfocc"
in the viewer's control tab, and finds its `ViewerControl`, whose `_setup` hands it the viser server.

- The sample selector (scene + keyframe of the eval split) re-encodes the chosen sample once, under
  `no_grad` in eval mode, and caches its `FieldGrid` (reference frame of the keyframe, metres; the layers
  and the viewer cameras are in its ego frame and reach the grid through `ego2ref`); during training
  the cached grid is refreshed every `ViewerSettings.refresh_every_steps` steps.
- `OccupancyViewer.render(camera)` is the model's camera-render hook (`SelfOccModel.set_camera_render_hook`,
  what `get_outputs_for_camera` calls): it renders the viewer camera from the cached grid
  (`selfocc_ns.viewer.render`).
- Layers (`selfocc_ns.viewer.scene`): predicted occupied voxels coloured by class, Occ3D ground truth,
  LiDAR points and the six camera frustums with their images, toggled by checkboxes; an SDF threshold
  slider and per-class checkboxes filter the voxels. New browser tabs start behind and above the ego.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from nerfstudio.viewer.viewer_elements import (
    ViewerButton,
    ViewerButtonGroup,
    ViewerCheckbox,
    ViewerControl,
    ViewerDropdown,
    ViewerSlider,
    ViewerText,
)
from torch import Tensor, nn

from selfocc_ns.data.occ3d import OCC3D_CLASSES, OCC3D_VOXEL_M
from selfocc_ns.viewer.render import (
    ViewerWorld,
    ego_point_in_nerfstudio,
    far_distance_m,
    in_reference_frame,
    move_with_ego,
    render_ego_camera,
    viewer_camera_in_ego,
    viewer_outputs,
)
from selfocc_ns.viewer.samples import SampleCatalogue, SelectedSample, encode_sample, load_eval_batch
from selfocc_ns.viewer.scene import (
    SceneLayers,
    camera_frustums,
    field_at_voxels,
    lidar_layer,
    predicted_layer,
    voxel_layer,
)

SHOWN_CLASS_IDS: Tuple[int, ...] = tuple(range(1, 17))
"""Classes with a checkbox (barrier .. vegetation); class 0 (occupied, class unknown) is always drawn."""


@dataclass
class ViewerSettings:
    """Defaults of the occupancy viewer (the GUI changes threshold, classes and layers at run time)."""

    sdf_threshold_m: float = 0.0
    """Initial occupancy threshold: occupied where SDF <= this (official 0)."""
    sdf_threshold_range_m: float = 1.0
    """The threshold slider spans [-range, +range] metres."""
    initial_position_m: Tuple[float, float, float] = (-22.0, 0.0, 14.0)
    """Initial viewer camera position in the ego frame of the sample: behind and above the ego vehicle."""
    initial_look_at_m: Tuple[float, float, float] = (12.0, 0.0, 0.0)
    """Point (ego frame) the initial view looks at."""
    refresh_every_steps: int = 100
    """While training, re-encode the selected sample once the model has trained this many steps since."""
    chunk_rays: Optional[int] = None
    """Rays per render chunk (None: the renderer's `eval_chunk_rays`); memory is flat in the resolution."""
    frustum_scale_m: float = 2.0
    """Size of the drawn camera frustums."""
    lidar_point_size_m: float = 0.15
    """Size of the drawn LiDAR points."""
    thumbnail_height_px: int = 100
    """Height of the images shown on the frustums."""
    show_layers: Tuple[str, ...] = ("occupancy", "cameras")
    """Layers shown at start (of occupancy, ground_truth, lidar, cameras)."""
    cpu_max_res: Optional[int] = 256
    """On a CPU, lower nerfstudio's 'Max res' (512) to this at start (docs/viewer.md: timings); None keeps it."""


class OccupancyViewerControl(ViewerControl):
    """nerfstudio's `ViewerControl` (its `_setup` gives the viser server) with a working `set_pose`."""

    def __init__(self, owner: "OccupancyViewer"):
        self._owner = weakref.ref(owner)

    def _setup(self, viewer) -> None:
        super()._setup(viewer)
        owner = self._owner()
        if owner is not None:
            owner.on_viewer_ready(viewer)

    def set_pose(self, position=None, look_at=None, instant: bool = False, up_direction=None, clients=None) -> None:
        """Move the browsers' cameras; position / look_at / up in nerfstudio world coordinates.

        (nerfstudio 1.1.5 declares this method but leaves it unimplemented.) `clients`: viser client
        handles (default: all connected ones). Clients that have not reported their camera yet are skipped.
        """
        from selfocc_ns.viewer.render import VISER_NERFSTUDIO_SCALE_RATIO as ratio

        for client in clients if clients is not None else self.viser_server.get_clients().values():
            try:
                with client.atomic():
                    if up_direction is not None:
                        client.camera.up_direction = np.asarray(up_direction, dtype=np.float64)
                    if position is not None:
                        client.camera.position = np.asarray(position, dtype=np.float64) * ratio
                    if look_at is not None:
                        client.camera.look_at = np.asarray(look_at, dtype=np.float64) * ratio
            except AssertionError:  # viser: the client's camera state is not known yet
                continue


class ClassToggles(nn.Module):
    """One checkbox per Occ3D class 1..16 plus All / None buttons (a folder in the viewer)."""

    def __init__(self, on_change):
        super().__init__()
        self._on_change = on_change
        self.all_or_none = ViewerButtonGroup("Classes", "All", ["All", "None"], cb_hook=self._all_or_none)
        for class_id in SHOWN_CLASS_IDS:
            setattr(self, f"class_{class_id:02d}",
                    ViewerCheckbox(OCC3D_CLASSES[class_id], True, cb_hook=lambda _: self._on_change()))

    def checkbox(self, class_id: int) -> ViewerCheckbox:
        return getattr(self, f"class_{class_id:02d}")

    def shown(self) -> Tuple[int, ...]:
        """Class ids to draw (0 always)."""
        return (0,) + tuple(c for c in SHOWN_CLASS_IDS if self.checkbox(c).value)

    def _all_or_none(self, element) -> None:
        for class_id in SHOWN_CLASS_IDS:
            self.checkbox(class_id).value = element.value == "All"
        self._on_change()


class OccupancyViewer(nn.Module):
    """Viewer state and controls of one SelfOcc pipeline (see the module docstring)."""

    def __init__(self, pipeline, settings: Optional[ViewerSettings] = None):
        super().__init__()
        self.settings = settings or ViewerSettings()
        self._pipeline = weakref.ref(pipeline)
        self._catalogue = SampleCatalogue(pipeline.datamanager.eval_index)
        self._sample: Optional[SelectedSample] = None
        self._layers: Optional[SceneLayers] = None
        self._viewer = None
        self._world: Optional[ViewerWorld] = None
        self._posed_clients: set = set()
        self._pose_lock = threading.Lock()
        self._drawn_key: Optional[tuple] = None
        self.render_log: List[Tuple[int, int, float]] = []
        """(height, width, seconds) of the latest renders (kept short), for measurements."""

        s = self.settings
        scenes = list(self._catalogue.scenes)
        labels = self._catalogue.labels(scenes[0])
        self.sample_scene = ViewerDropdown("Scene", scenes[0], scenes, cb_hook=self._on_scene,
                                           hint="Scene of the eval split")
        self.sample_scene_keyframe = ViewerDropdown("Keyframe", labels[0], labels, cb_hook=self._on_keyframe,
                                                    hint="Keyframe (index · sample token): re-encodes its six images")
        self.sdf_threshold = ViewerSlider("SDF threshold (m)", s.sdf_threshold_m, -s.sdf_threshold_range_m,
                                          s.sdf_threshold_range_m, step=0.05, cb_hook=lambda _: self.update_voxels(),
                                          hint="Voxels are occupied where the SDF is <= this")
        self.show_occupancy = self._layer_checkbox("Predicted occupancy", "occupancy")
        self.show_ground_truth = self._layer_checkbox("Ground-truth occupancy", "ground_truth")
        self.show_lidar = self._layer_checkbox("LiDAR points", "lidar")
        self.show_cameras = self._layer_checkbox("Camera frustums", "cameras")
        self.shown_classes = ClassToggles(self.update_voxels)
        self.status = ViewerText("Sample", "not encoded yet", disabled=True)
        self.occupied = ViewerText("Occupied voxels", "-", disabled=True,
                                   hint="Predicted occupied voxels drawn at this threshold (raise it if none)")
        self.view_behind_ego = ViewerButton("View from behind the ego", cb_hook=lambda _: self.view_from_behind())
        self.control = OccupancyViewerControl(self)

    def _layer_checkbox(self, label: str, layer: str) -> ViewerCheckbox:
        return ViewerCheckbox(label, layer in self.settings.show_layers,
                              cb_hook=lambda element: self._on_layer(layer, element.value))

    # -- pipeline access -----------------------------------------------------------------------------
    def pipeline(self):
        pipeline = self._pipeline()
        if pipeline is None:
            raise RuntimeError("the pipeline of this viewer no longer exists")
        return pipeline

    def world(self) -> ViewerWorld:
        """The training split's normalised world (the one nerfstudio's viewer draws the cameras in)."""
        if self._world is None:
            self._world = ViewerWorld.from_dataparser_outputs(self.pipeline().datamanager.train_dataparser_outputs)
        return self._world

    @property
    def sample(self) -> Optional[SelectedSample]:
        return self._sample

    def selected_index(self) -> int:
        return self._catalogue.sample_index(self.sample_scene.value, self.sample_scene_keyframe.value)

    # -- sample selection ----------------------------------------------------------------------------
    def select(self, sample_index: int, follow: bool = True) -> SelectedSample:
        """Encode an eval keyframe, cache it, redraw the layers; the browsers' views follow the ego."""
        pipeline = self.pipeline()
        model = pipeline.model
        self._show_selection(*self._catalogue.locate(sample_index))
        start = time.perf_counter()
        batch = load_eval_batch(pipeline.datamanager, sample_index, model.device)
        grid = encode_sample(model, batch)
        ego2ref = batch.ego2ref_of(0)  # layers are drawn in the ego frame, the grid lives in the reference frame
        ref2ego = torch.linalg.inv(ego2ref)
        lidar_ego = None
        if batch.lidar_points:
            lidar_ego = batch.lidar_points[0] @ ref2ego[:3, :3].T + ref2ego[:3, 3]
        previous = self._sample
        self._sample = SelectedSample(
            index=sample_index,
            frame=pipeline.datamanager.eval_index.sample_frame(sample_index),
            grid=grid,
            voxels=field_at_voxels(grid, ego2ref, model.semantic_label_space),
            lidar_m=lidar_ego,
            gt_classes=batch.occ_semantics[0] if batch.occ_semantics is not None else None,
            encoded_at_step=self._viewer_step(),
            encode_s=time.perf_counter() - start,
            ego2ref=ego2ref,
        )
        self.update_sample_layers()
        if follow and previous is not None and previous.index != sample_index:
            self.follow(previous.frame.ref_ego2global, self._sample.frame.ref_ego2global)
        return self._sample

    def _viewer_step(self) -> int:
        return int(getattr(self._viewer, "step", 0) or 0)

    def ensure_sample(self) -> SelectedSample:
        """The cached sample, encoding the selected one first if needed (or if training moved on)."""
        if self._sample is None:
            return self.select(self.selected_index(), follow=False)
        training = self._viewer is not None and getattr(self._viewer, "trainer", None) is not None
        if training and self._viewer_step() - self._sample.encoded_at_step >= self.settings.refresh_every_steps:
            return self.select(self._sample.index, follow=False)
        return self._sample

    def _show_selection(self, scene: str, label: str) -> None:
        """Make the dropdowns show (scene, label); their callbacks then see the sample is already selected."""
        keyframes = self.sample_scene_keyframe
        labels = self._catalogue.labels(scene)
        if list(keyframes.options) != labels:
            keyframes.set_options(labels)
        if keyframes.value != label:
            keyframes.value = label
        if self.sample_scene.value != scene:
            self.sample_scene.value = scene

    def _on_scene(self, element) -> None:
        scene = element.value
        if self._sample is not None and self._catalogue.locate(self._sample.index)[0] == scene:
            return  # set by `select` itself
        labels = self._catalogue.labels(scene)
        self._show_selection(scene, labels[0])
        self.select(self._catalogue.sample_index(scene, labels[0]))

    def _on_keyframe(self, element) -> None:
        if element.value in self._catalogue.labels(self.sample_scene.value):
            index = self.selected_index()
            if self._sample is None or index != self._sample.index:
                self.select(index)

    # -- rendering -----------------------------------------------------------------------------------
    def render(self, camera) -> Dict[str, Tensor]:
        """rgb / depth / depth_m / accumulation / semantics [H, W, C] of a nerfstudio camera (see selfocc_ns.viewer.render).

        In the viewer (or once a sample is selected): from the selected sample. Otherwise (`ns-render`, scripts):
        from the keyframe nearest to the camera (`selfocc_ns.viewer.keyframe_cameras`).
        """
        if self._viewer is None and self._sample is None:
            return self.keyframe_renderer()(camera)
        sample = self.ensure_sample()
        world = self.world()
        view = in_reference_frame(viewer_camera_in_ego(camera, world, sample.frame.ref_ego2global), sample.ego2ref)
        start = time.perf_counter()
        model = self.pipeline().model
        render = render_ego_camera(model, sample.grid, view, self.settings.chunk_rays)
        outputs = viewer_outputs(render, far_distance_m(sample.grid, view), world.scale, model.semantic_label_space)
        self.render_log = (self.render_log + [(*view.image_hw, time.perf_counter() - start)])[-50:]
        return outputs

    def keyframe_renderer(self):
        """The nearest-keyframe renderer used outside the viewer (built once)."""
        if getattr(self, "_keyframe_renderer", None) is None:
            from selfocc_ns.viewer.keyframe_cameras import KeyframeCameraRenderer

            self._keyframe_renderer = KeyframeCameraRenderer(self.pipeline(), chunk_rays=self.settings.chunk_rays)
        return self._keyframe_renderer

    # -- layers --------------------------------------------------------------------------------------
    def on_viewer_ready(self, viewer) -> None:
        """Called once nerfstudio's viewer exists: create the layers, encode the first sample."""
        self._viewer = viewer
        report_actual_port(viewer)
        self._interrupt_renders_on_change(viewer)
        if self.settings.cpu_max_res is not None and self.pipeline().model.device.type == "cpu":
            viewer.control_panel._max_res.value = self.settings.cpu_max_res  # no public setter in 1.1.5
        self._layers = SceneLayers(viewer.viser_server.scene, self.world(), self.settings.frustum_scale_m)
        for layer, checkbox in self._layer_checkboxes().items():
            self._layers.visible[layer] = bool(checkbox.value)
        self.select(self.selected_index(), follow=False)
        viewer.viser_server.on_client_connect(self._on_client)

    def _interrupt_renders_on_change(self, viewer) -> None:
        """Let a change of our controls interrupt a running render instead of waiting for it.

        nerfstudio runs every element callback under the viewer's lock, which a render holds until it
        finishes (seconds on a CPU); asking for a re-render first makes the render stop at its next chunk.
        """
        from nerfstudio.viewer.utils import parse_object
        from nerfstudio.viewer.viewer_elements import ViewerElement

        for _, element in parse_object(self, ViewerElement, "selfocc"):
            locked_hook = element.cb_hook
            element.cb_hook = lambda e, hook=locked_hook: (viewer._trigger_rerender(), hook(e))

    def _layer_checkboxes(self) -> Dict[str, ViewerCheckbox]:
        return {"occupancy": self.show_occupancy, "ground_truth": self.show_ground_truth,
                "lidar": self.show_lidar, "cameras": self.show_cameras}

    def _on_layer(self, layer: str, visible: bool) -> None:
        if self._layers is not None:
            self._layers.set_visible(layer, visible)

    def update_sample_layers(self) -> None:
        """Redraw everything of the selected sample (pose, voxels, LiDAR, cameras) and the status line."""
        sample = self._sample
        if sample is None:
            return
        training = getattr(self._viewer, "trainer", None) is not None
        self.status.value = (f"{sample.frame.scene_name} #{self._catalogue.locate(sample.index)[1]}: encoded in "
                             f"{sample.encode_s:.2f} s" + (f" (step {sample.encoded_at_step})" if training else ""))
        if self._layers is None:
            return
        self._layers.place(sample.frame.ref_ego2global)
        self._drawn_key = None
        self.update_voxels()
        if sample.lidar_m is not None:
            self._layers.set_points("lidar", lidar_layer(sample.lidar_m), self.settings.lidar_point_size_m)
        self._layers.set_cameras(camera_frustums(sample.frame, self.settings.thumbnail_height_px))

    def update_voxels(self) -> None:
        """Redraw the predicted and ground-truth voxels (threshold or classes changed); skips no-op updates."""
        sample, layers = self._sample, self._layers
        if sample is None or layers is None:
            return
        shown = self.shown_classes.shown()
        key = (id(sample), float(self.sdf_threshold.value), shown)
        if key == self._drawn_key:
            return
        self._drawn_key = key
        predicted = predicted_layer(sample.voxels, key[1], shown)
        layers.set_points("occupancy", predicted, OCC3D_VOXEL_M)
        self.occupied.value = f"{len(predicted.points_m)} at SDF <= {key[1]:.2f} m"
        if sample.gt_classes is not None:
            layers.set_points("ground_truth", voxel_layer(sample.gt_classes, shown), OCC3D_VOXEL_M)

    # -- views ---------------------------------------------------------------------------------------
    def _on_client(self, client) -> None:
        """A new browser tab starts behind the ego: as soon as its camera is known (now, or at its first report)."""

        def pose_once(_=None) -> None:
            with self._pose_lock:
                if client.client_id in self._posed_clients:
                    return
                self._posed_clients.add(client.client_id)
            self.view_from_behind([client])

        client.camera.on_update(pose_once)
        try:
            client.camera.position  # the tab connected before the viewer was ready and has reported already
        except AssertionError:
            return
        pose_once()

    def view_from_behind(self, clients=None) -> None:
        """Put the browsers' cameras behind and above the ego vehicle of the selected sample."""
        if self._sample is None or self._viewer is None:
            return
        world, ego2global = self.world(), self._sample.frame.ref_ego2global
        position = ego_point_in_nerfstudio(world, ego2global, self.settings.initial_position_m)
        look_at = ego_point_in_nerfstudio(world, ego2global, self.settings.initial_look_at_m)
        up = world.transform[:3, :3] @ ego2global[:3, :3] @ np.array([0.0, 0.0, 1.0])
        self.control.set_pose(position, look_at, up_direction=up, clients=clients)

    def follow(self, old_ego2global: np.ndarray, new_ego2global: np.ndarray) -> None:
        """Keep every browser camera's pose relative to the ego vehicle when the sample changes."""
        if self._viewer is None:
            return
        world = self.world()
        ratio = world.viser_ratio
        for client in self.control.viser_server.get_clients().values():
            try:
                position, look_at = client.camera.position / ratio, client.camera.look_at / ratio
            except AssertionError:
                continue
            moved = [move_with_ego(world, p, old_ego2global, new_ego2global) for p in (position, look_at)]
            self.control.set_pose(moved[0], moved[1], clients=[client])


def report_actual_port(viewer) -> Optional[int]:
    """Say so when the viewer is not on the port asked for, and make nerfstudio's banner show the real one.

    nerfstudio 1.1.5 takes a random free port when the default (7007) is busy, without a word; with an explicit
    `--viewer.websocket-port` that is busy, viser binds the next free port while nerfstudio's banner still shows
    the busy one. Returns the port actually used.
    """
    actual = int(viewer.viser_server.get_port())
    config = viewer.config
    requested = config.websocket_port if config.websocket_port is not None else config.websocket_port_default
    if requested is not None and actual != int(requested):
        from nerfstudio.utils.rich_utils import CONSOLE

        CONSOLE.print(f"[bold yellow]selfocc warning:[/bold yellow] port {requested} is busy; the viewer runs on port "
                      f"{actual}: http://localhost:{actual}", soft_wrap=True, highlight=False)
        viewer.viewer_info = [line.replace(f":{requested}", f":{actual}") for line in viewer.viewer_info]
    return actual


def attach_viewer(pipeline, settings: Optional[ViewerSettings] = None) -> OccupancyViewer:
    """Give a SelfOcc pipeline its viewer (`pipeline.selfocc`) and let the model render viewer cameras with it."""
    viewer = OccupancyViewer(pipeline, settings)
    pipeline.selfocc = viewer
    pipeline.model.set_camera_render_hook(viewer.render)
    return viewer

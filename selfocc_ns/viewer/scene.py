"""Viewer layers: predicted / ground-truth occupancy, LiDAR points and the camera rig of one sample.

The layer data are computed by pure functions (metric, ego frame of the sample, whatever the model's reference
frame: the field is queried at `ego2ref` of the ego-frame voxel centres; tested without a server),
and `SceneLayers` puts them in viser's scene under one node per sample, `/selfocc`, posed at the sample's
ego frame in viser's coordinates (`ViewerWorld.viser_from_global`); every child is given in metres times
`ViewerWorld.viser_units_per_metre`, so the layers line up with the rendered view and keep float precision.

Voxels are drawn as square points one voxel (0.4 m) wide at the Occ3D voxel centres, and only where they
are visible: an occupied voxel with at least one free 6-neighbour (outside the grid: free at the sides and on top).
Predicted occupancy is the field's SDF at the voxel centres (Occ3D's own points, the clean protocol of
`selfocc_ns.metrics.occupancy`, no crops) <= threshold, class = argmax over 1..16 of the semantic logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from selfocc_ns.data.frames import Frame
from selfocc_ns.data.label_maps import SemanticLabelSpace
from selfocc_ns.data.occ3d import FREE_ID, OCC3D_PALETTE, OCC3D_RANGE_M, OCC3D_SHAPE, OCC3D_VOXEL_M
from selfocc_ns.metrics.occupancy import clean_occupancy_prediction, clean_query_points, semantic_ids
from selfocc_ns.model.field_grid import FieldGrid, query_field
from selfocc_ns.viewer.render import ViewerWorld

LAYERS: Tuple[str, ...] = ("occupancy", "ground_truth", "lidar", "cameras")
"""Scene layers, each a child node of the sample node `/selfocc` that can be shown or hidden."""
QUERY_CHUNK_POINTS = 200_000
"""Voxel centres read from the grid per `query_field` call (bounds memory)."""


@dataclass
class VoxelField:
    """The field of one sample at the Occ3D voxel centres (ego frame)."""

    sdf_m: Float[Tensor, "200 200 16"]
    classes: Int[Tensor, "200 200 16"]
    """Argmax class over 1..16 (0 when the model has no semantic head)."""


@dataclass
class PointLayer:
    """Points of one layer in the ego frame."""

    points_m: np.ndarray
    """[N, 3] float32, metres."""
    colours: np.ndarray
    """[N, 3] uint8."""
    classes: Optional[np.ndarray] = None
    """[N] Occ3D class per point (voxel layers)."""


@dataclass
class FrustumSpec:
    """One camera of the sample's rig, for viser's camera frustum."""

    channel: str
    cam2ego: np.ndarray
    """[4, 4] OpenCV camera -> ego frame of the sample."""
    fov_rad: float
    """Vertical field of view."""
    aspect: float
    """Width / height."""
    thumbnail: Optional[np.ndarray] = None
    """[h, w, 3] uint8 image shown on the frustum."""


@torch.no_grad()
def field_at_voxels(
    grid: FieldGrid, ego2ref: Optional[Tensor] = None, label_space: SemanticLabelSpace = "occ3d"
) -> VoxelField:
    """SDF and class (as the occupancy eval reads it) of a B = 1 grid at the 200 x 200 x 16 Occ3D voxel centres
    (ego frame; `ego2ref` maps them into the grid's reference frame), in chunks."""
    points = clean_query_points().to(grid.values.device).reshape(1, -1, 3)
    if ego2ref is not None:
        ego2ref = ego2ref.to(points)
        points = points @ ego2ref[:3, :3].T + ego2ref[:3, 3]
    sdf, classes = [], []
    for start in range(0, points.shape[1], QUERY_CHUNK_POINTS):
        samples = query_field(grid, points[:, start : start + QUERY_CHUNK_POINTS])
        sdf.append(samples.sdf[0, :, 0].float().cpu())
        logits = samples.semantic_logits
        if logits is None or logits.shape[-1] < 17:
            classes.append(torch.zeros(samples.sdf.shape[1], dtype=torch.long))
        else:
            classes.append(semantic_ids(logits[0].float().cpu(), label_space))
    return VoxelField(torch.cat(sdf).reshape(OCC3D_SHAPE), torch.cat(classes).reshape(OCC3D_SHAPE))


def visible_surface(occupied: Bool[Tensor, "X Y Z"]) -> Bool[Tensor, "X Y Z"]:
    """Occupied voxels with at least one free 6-neighbour.

    Outside the grid counts as free at the sides and on top (a fully occupied grid shows its outer shell,
    as a viewer from above sees it) and as occupied below (the underside is never drawn).
    """
    padded = torch.nn.functional.pad(occupied[None, None].float(), (1, 1, 1, 1, 1, 1), value=0.0)[0, 0] > 0.5
    padded[:, :, 0] = True
    centre = padded[1:-1, 1:-1, 1:-1]
    free_neighbour = torch.zeros_like(centre)
    for axis in range(3):
        for shift in (-1, 1):
            free_neighbour |= ~torch.roll(padded, shifts=shift, dims=axis)[1:-1, 1:-1, 1:-1]
    return centre & free_neighbour


def voxel_layer(
    class_grid: Int[Tensor, "200 200 16"],
    shown_classes: Optional[Sequence[int]] = None,
    colour_unknown_by_height: bool = True,
) -> PointLayer:
    """Visible occupied voxels of an Occ3D class grid (17 = free) as coloured points at the voxel centres.

    Args:
        class_grid: Occ3D classes per voxel (a prediction or a ground truth).
        shown_classes: classes to draw (None: all); hidden classes still hide what lies behind them.
        colour_unknown_by_height: class 0 ('others' / occupied, class unknown) coloured by height instead of
            the palette's black.
    """
    grid = torch.as_tensor(class_grid).long().cpu()
    keep = visible_surface(grid != FREE_ID)
    if shown_classes is not None:
        allowed = torch.zeros(FREE_ID + 1, dtype=torch.bool)
        allowed[list(shown_classes)] = True
        keep &= allowed[grid]
    ijk = keep.nonzero()
    classes = grid[keep].numpy()
    lo = np.asarray(OCC3D_RANGE_M[:3], dtype=np.float32)
    points = lo + (ijk.numpy().astype(np.float32) + 0.5) * np.float32(OCC3D_VOXEL_M)
    colours = OCC3D_PALETTE[classes].copy()
    if colour_unknown_by_height:
        unknown = classes == 0
        colours[unknown] = height_colours(points[unknown, 2])
    return PointLayer(points.astype(np.float32), colours.astype(np.uint8), classes.astype(np.uint8))


def height_colours(z_m: np.ndarray, z_range_m: Tuple[float, float] = (-2.0, 6.0)) -> np.ndarray:
    """[N] heights -> [N, 3] uint8 'turbo' colours over z_range_m."""
    from matplotlib import colormaps

    t = np.clip((np.asarray(z_m, dtype=np.float64) - z_range_m[0]) / (z_range_m[1] - z_range_m[0]), 0.0, 1.0)
    return (colormaps["turbo"](t)[..., :3] * 255.0).astype(np.uint8).reshape(-1, 3)


def predicted_layer(field: VoxelField, threshold_m: float, shown_classes: Optional[Sequence[int]] = None) -> PointLayer:
    """The prediction the clean Occ3D protocol scores (SDF <= threshold, argmax class) as a voxel layer."""
    return voxel_layer(clean_occupancy_prediction(field.sdf_m, field.classes, threshold_m), shown_classes)


def lidar_layer(points_m: Float[Tensor, "P 3"], max_range_m: float = 60.0) -> PointLayer:
    """LiDAR points of the sample (ego frame) within max_range_m, coloured by height."""
    points = torch.as_tensor(points_m).float().cpu().numpy().reshape(-1, 3)
    points = points[np.linalg.norm(points[:, :2], axis=1) <= max_range_m]
    return PointLayer(points, height_colours(points[:, 2]))


def camera_frustums(frame: Frame, thumbnail_height_px: int = 100) -> List[FrustumSpec]:
    """The sample's cameras in its reference ego frame, with downscaled images."""
    from PIL import Image

    ref_inv = np.linalg.inv(frame.ref_ego2global)
    specs = []
    for channel, cam in frame.cameras.items():
        thumbnail = None
        if cam.image_path.is_file():
            with Image.open(cam.image_path) as img:
                width = max(1, round(img.width * thumbnail_height_px / img.height))
                thumbnail = np.asarray(img.convert("RGB").resize((width, thumbnail_height_px), Image.BILINEAR))
        fov = 2.0 * float(np.arctan(cam.height / (2.0 * cam.intrinsics[1, 1])))
        cam2ego = ref_inv @ cam.ego2global @ cam.cam2ego
        specs.append(FrustumSpec(channel, cam2ego, fov, cam.width / cam.height, thumbnail))
    return specs


class SceneLayers:
    """The viser scene nodes of the selected sample: `/selfocc` (at the ego pose) and one child per layer."""

    root = "/selfocc"

    def __init__(self, scene, world: ViewerWorld, frustum_scale_m: float = 2.0):
        self.scene = scene
        """viser's scene API (`ViserServer.scene`)."""
        self.world = world
        self.frustum_scale_m = frustum_scale_m
        self.visible: Dict[str, bool] = {layer: True for layer in LAYERS}
        self.handles: Dict[str, object] = {}

    @property
    def units_per_metre(self) -> float:
        return self.world.viser_units_per_metre

    def place(self, ref_ego2global: np.ndarray) -> None:
        """Move the sample node (and so every layer) to the sample's ego pose; draw the ego vehicle."""
        wxyz, position = self.world.viser_from_global(ref_ego2global)
        u = self.units_per_metre
        if "root" not in self.handles:
            self.handles["root"] = self.scene.add_frame(
                self.root, show_axes=True, axes_length=2.0 * u, axes_radius=0.08 * u, wxyz=wxyz, position=position
            )
            # the ego vehicle (nuScenes ego origin: rear axle centre on the ground)
            self.handles["ego"] = self.scene.add_box(
                f"{self.root}/ego", color=(235, 235, 235), dimensions=(4.6 * u, 1.9 * u, 1.6 * u),
                position=(1.4 * u, 0.0, 0.8 * u),
            )
        else:
            self.handles["root"].wxyz = wxyz
            self.handles["root"].position = position

    def set_points(self, layer: str, data: PointLayer, point_size_m: float) -> None:
        """Replace a point layer (an empty one is removed: viser cannot draw zero points)."""
        old = self.handles.pop(layer, None)
        if len(data.points_m) == 0:
            if old is not None:
                old.remove()
            return
        u = self.units_per_metre
        self.handles[layer] = self.scene.add_point_cloud(
            f"{self.root}/{layer}", points=data.points_m * u, colors=data.colours, point_size=point_size_m * u,
            point_shape="square", visible=self.visible[layer],
        )

    def set_cameras(self, specs: Sequence[FrustumSpec]) -> None:
        """Replace the camera frustums (OpenCV cameras, as viser's frustums are)."""
        from selfocc_ns.viewer.render import rotation_to_wxyz

        u = self.units_per_metre
        self.handles["cameras"] = self.scene.add_frame(f"{self.root}/cameras", show_axes=False,
                                                       visible=self.visible["cameras"])
        for spec in specs:
            self.scene.add_camera_frustum(
                f"{self.root}/cameras/{spec.channel}", fov=spec.fov_rad, aspect=spec.aspect,
                scale=self.frustum_scale_m * u, image=spec.thumbnail, color=(255, 211, 105),
                wxyz=rotation_to_wxyz(spec.cam2ego[:3, :3]), position=spec.cam2ego[:3, 3] * u,
            )

    def set_visible(self, layer: str, visible: bool) -> None:
        self.visible[layer] = bool(visible)
        handle = self.handles.get(layer)
        if handle is not None:
            handle.visible = bool(visible)

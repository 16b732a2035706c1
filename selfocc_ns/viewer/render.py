"""Viewer rendering: a nerfstudio viewer camera -> the ego frame of the selected sample -> SelfOcc render.

Frames (docs/architecture.md):
- the viewer's world is nerfstudio's normalised world of the TRAINING split (the one the training cameras
  are drawn in): p_ns = scale * (T @ [p_global; 1]), with T = `dataparser_transform` (3x4) and scale =
  `dataparser_scale`, as nerfstudio's `transform_poses_to_original_space` inverts it; viser shows it
  multiplied by `VISER_NERFSTUDIO_SCALE_RATIO` (10);
- nerfstudio cameras have OpenGL axes (x right, y up, z backwards); SelfOcc cameras are OpenCV
  (x right, y down, z forward) in the metric ego frame of the input keyframe (x forward, y left, z up).

`viewer_camera_in_ego` chains: normalised world -> global (metres) -> ego frame of the sample (inverse of
its `Frame.ref_ego2global`) -> OpenCV axes; intrinsics come from the camera (fx, fy, cx, cy, H, W).
`in_reference_frame` moves that camera into the model's reference frame (`SelfOccBatch.ego2ref`; the LiDAR
frame for the depth presets) before it is rendered.
`render_ego_camera` renders every pixel centre (j + 0.5, i + 0.5) of that camera from a decoded
`FieldGrid` in bounded chunks; `viewer_outputs` turns the metric render into the [H, W, C] images
nerfstudio's viewer shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from selfocc_ns.data.label_maps import SemanticLabelSpace, display_class_lut
from selfocc_ns.data.nuscenes import OPENCV_TO_OPENGL
from selfocc_ns.data.occ3d import OCC3D_PALETTE
from selfocc_ns.model.field_grid import FieldGrid
from selfocc_ns.model.rays import fixed_lattice_px, intersect_aabb, rays_from_pixels
from selfocc_ns.model.renderer import RenderOutputs

VISER_NERFSTUDIO_SCALE_RATIO = 10.0
"""Viser units per nerfstudio world unit (`nerfstudio.viewer.viewer.VISER_NERFSTUDIO_SCALE_RATIO`; copied so
this module imports without the viewer stack; a test checks they agree)."""
MIN_SURFACE_ACCUMULATION = 0.5
"""Rays whose accumulated opacity stays below this count as seeing no surface (composited as far away)."""


def _homogeneous(pose: np.ndarray) -> np.ndarray:
    """[..., 3, 4] or [..., 4, 4] -> [..., 4, 4] float64."""
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape[-2] == 4:
        return pose.copy()
    bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (*pose.shape[:-2], 1, 4))
    return np.concatenate([pose, bottom], axis=-2)


@dataclass(frozen=True)
class ViewerWorld:
    """nerfstudio's normalised world (of the training split) and its relation to the global metric frame."""

    transform: np.ndarray
    """[3, 4] `dataparser_transform`: unscaled nerfstudio coordinates = transform @ [p_global; 1]."""
    scale: float
    """`dataparser_scale`: nerfstudio units per metre."""
    viser_ratio: float = VISER_NERFSTUDIO_SCALE_RATIO
    """Viser units per nerfstudio unit."""

    @classmethod
    def from_dataparser_outputs(cls, outputs) -> "ViewerWorld":
        return cls(outputs.dataparser_transform.detach().cpu().double().numpy(), float(outputs.dataparser_scale))

    @property
    def viser_units_per_metre(self) -> float:
        return self.viser_ratio * self.scale

    def _transform4(self) -> np.ndarray:
        return _homogeneous(self.transform)

    def global_from_nerfstudio(self, c2w_ns: np.ndarray) -> np.ndarray:
        """[..., 3|4, 4] pose in the normalised world -> [..., 4, 4] global metric pose (axes unchanged)."""
        pose = _homogeneous(c2w_ns)
        pose[..., :3, 3] /= self.scale
        return np.linalg.inv(self._transform4()) @ pose

    def nerfstudio_from_global(self, pose_global: np.ndarray) -> np.ndarray:
        """[..., 4, 4] global metric pose -> [..., 4, 4] pose in the normalised world (axes unchanged)."""
        pose = self._transform4() @ _homogeneous(pose_global)
        pose[..., :3, 3] *= self.scale
        return pose

    def viser_from_global(self, pose_global: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """A global metric pose as a viser scene-node pose: (wxyz quaternion (4,), position (3,) in viser units).

        Children of such a node must be given in metres times `viser_units_per_metre`.
        """
        pose = self.nerfstudio_from_global(pose_global)
        return rotation_to_wxyz(pose[:3, :3]), pose[:3, 3] * self.viser_ratio

    def viser_point_from_global(self, point_m: np.ndarray) -> np.ndarray:
        """[..., 3] global metric points -> viser coordinates."""
        t4 = self._transform4()
        return (np.asarray(point_m, dtype=np.float64) @ t4[:3, :3].T + t4[:3, 3]) * self.scale * self.viser_ratio


def ego_point_in_nerfstudio(world: "ViewerWorld", ego2global: np.ndarray, point_m) -> np.ndarray:
    """A point of the ego frame (metres) in nerfstudio's normalised world."""
    point_global = ego2global[:3, :3] @ np.asarray(point_m, dtype=np.float64) + ego2global[:3, 3]
    return world.viser_point_from_global(point_global) / world.viser_ratio


def move_with_ego(world: "ViewerWorld", point_ns: np.ndarray, old_ego2global: np.ndarray, new_ego2global: np.ndarray):
    """A nerfstudio-world point rigidly carried from the old ego frame to the new one."""
    t4 = np.vstack([world.transform, [0.0, 0.0, 0.0, 1.0]])
    point_global = np.linalg.solve(t4, np.append(np.asarray(point_ns, dtype=np.float64) / world.scale, 1.0))
    in_ego = np.linalg.solve(old_ego2global, point_global)
    return ego_point_in_nerfstudio(world, new_ego2global, in_ego[:3])


def rotation_to_wxyz(rotation: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a 3x3 rotation matrix (viser's convention)."""
    import viser.transforms as vtf

    return np.asarray(vtf.SO3.from_matrix(np.asarray(rotation, dtype=np.float64)).wxyz)


@dataclass
class EgoCamera:
    """A pinhole camera in the ego frame of a sample (OpenCV axes, metres, pixels of an H x W image)."""

    intrinsics: Float[Tensor, "3 3"]
    cam2ego: Float[Tensor, "4 4"]
    image_hw: Tuple[int, int]


def single_camera(camera) -> Tuple[np.ndarray, Tuple[float, float, float, float], Tuple[int, int]]:
    """(c2w [3, 4] float64, (fx, fy, cx, cy), (H, W)) of a nerfstudio `Cameras` holding exactly one camera."""
    c2w = camera.camera_to_worlds.detach().reshape(-1, 3, 4)
    if c2w.shape[0] != 1:
        raise ValueError(f"the viewer renders one camera at a time, got {c2w.shape[0]}")

    def scalar(t: Tensor) -> float:
        return float(t.detach().reshape(-1)[0])

    intrinsics = (scalar(camera.fx), scalar(camera.fy), scalar(camera.cx), scalar(camera.cy))
    image_hw = (int(scalar(camera.height)), int(scalar(camera.width)))
    return c2w[0].cpu().double().numpy(), intrinsics, image_hw


def viewer_camera_in_ego(camera, world: ViewerWorld, ref_ego2global: np.ndarray) -> EgoCamera:
    """A nerfstudio camera (OpenGL axes, normalised world) as an OpenCV camera in the sample's ego frame.

    Args:
        camera: `Cameras` with one camera (the viewer's, or a dataset camera).
        world: the normalised world the camera lives in.
        ref_ego2global: [4, 4] reference ego pose of the selected sample (`Frame.ref_ego2global`).
    """
    c2w_ns, (fx, fy, cx, cy), image_hw = single_camera(camera)
    cam2global_gl = world.global_from_nerfstudio(c2w_ns)
    cam2ego = np.linalg.inv(np.asarray(ref_ego2global, dtype=np.float64)) @ cam2global_gl @ OPENCV_TO_OPENGL
    k = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)
    return EgoCamera(k, torch.from_numpy(cam2ego).float(), image_hw)


def in_reference_frame(view: EgoCamera, ego2ref: Optional[Tensor]) -> EgoCamera:
    """The same camera with its pose in the sample's reference frame (`ego2ref @ cam2ego`; None: unchanged)."""
    if ego2ref is None:
        return view
    return EgoCamera(view.intrinsics, ego2ref.to(view.cam2ego) @ view.cam2ego, view.image_hw)


def render_ego_camera(model, grid: FieldGrid, view: EgoCamera, chunk_rays: Optional[int] = None) -> RenderOutputs:
    """Render every pixel centre of `view` from `grid` (B = 1) with the model's renderer, in chunks.

    Outputs have leading dims [1, 1, H, W]; depth is camera z-depth in metres, like `model.render_depth`.
    """
    device = grid.values.device
    lattice = fixed_lattice_px(view.image_hw, view.image_hw, device)
    return model.renderer.render_cameras_chunked(
        grid,
        lattice[None, None],
        view.intrinsics.to(device)[None, None],
        view.cam2ego.to(device)[None, None],
        chunk_rays=chunk_rays,
    )


def far_distance_m(grid: FieldGrid, view: EgoCamera) -> Float[Tensor, "H W 1"]:
    """Per pixel, where the ray leaves the scene box (or the farthest box corner for rays that miss it)."""
    device = grid.values.device
    lattice = fixed_lattice_px(view.image_hw, view.image_hw, device).reshape(1, -1, 2)
    origins, directions, _ = rays_from_pixels(lattice, view.intrinsics.to(device)[None], view.cam2ego.to(device)[None])
    _, far, hit = intersect_aabb(origins.reshape(-1, 3), directions.reshape(-1, 3), grid.range_m)
    corners = torch.tensor(np.array(np.meshgrid(*[grid.range_m[i::3] for i in range(3)])).reshape(3, -1).T,
                           dtype=origins.dtype, device=device)
    farthest = torch.linalg.vector_norm(corners - origins.reshape(-1, 3)[:1], dim=-1).max()
    return torch.where(hit, far, farthest).reshape(*view.image_hw, 1)


def semantic_colours(
    semantics: Float[Tensor, "*pixels C"], accumulation: Float[Tensor, "*pixels 1"],
    label_space: SemanticLabelSpace = "occ3d",
) -> Float[Tensor, "*pixels 3"]:
    """Occ3D palette colour of the most likely rendered class (0..16, 17 sky; OpenSeeD channels mapped to those
    by `display_class_lut`), faded to black by opacity."""
    palette = torch.as_tensor(OCC3D_PALETTE, dtype=torch.float32, device=semantics.device) / 255.0
    lut = torch.as_tensor(display_class_lut(label_space), device=semantics.device)
    num = min(semantics.shape[-1], len(lut))
    classes = lut[semantics[..., :num].argmax(dim=-1)]
    return palette[classes] * accumulation.clamp(0.0, 1.0)


def viewer_outputs(render: RenderOutputs, far_m: Float[Tensor, "H W 1"], world_scale: float,
                   label_space: SemanticLabelSpace = "occ3d") -> Dict[str, Tensor]:
    """The [H, W, C] images of one render (leading dims [1, 1, H, W]) for nerfstudio's viewer.

    - `rgb` (rendered colour over black), `accumulation`, `semantics` (Occ3D palette, if the model has a
      semantic head);
    - `depth`: distance along the ray in nerfstudio's normalised units (metres x dataparser_scale), as
      nerfstudio models return it; the viewer composites its scene nodes (cameras, voxel layers) with it.
      Rays that see no surface (accumulation < 0.5) report where they leave the scene box;
    - `depth_m`: the same distance in metres.
    """
    accumulation = render.accumulation[0, 0]
    surface = accumulation >= MIN_SURFACE_ACCUMULATION
    distance_m = torch.where(surface, render.ray_distance[0, 0], far_m.to(accumulation.dtype))
    out = {
        "rgb": (render.rgb[0, 0] if render.rgb is not None else accumulation.expand(*accumulation.shape[:2], 3)),
        "depth": distance_m * world_scale,
        "depth_m": distance_m,
        "accumulation": accumulation,
    }
    out["rgb"] = out["rgb"].clamp(0.0, 1.0)
    if render.semantics is not None:
        out["semantics"] = semantic_colours(render.semantics[0, 0], accumulation, label_space)
    return out

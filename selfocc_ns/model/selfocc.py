"""The SelfOcc nerfstudio Model: images -> TPV planes -> SDF grid -> NeuS rendering -> self-supervision.

`get_outputs(batch)` takes a `SelfOccBatch` (the datamanager's first return value; no collider): it
encodes the input keyframe's six images into a decoded field grid (ego frame of the keyframe) and renders
the anchor cameras' ray lattices. `get_loss_dict` applies the weighted SelfOcc losses. Evaluation and the
viewer render from a grid decoded once per sample (`encode`, `render_depth`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.base_model import Model, ModelConfig
from torch import Tensor

from selfocc_ns.data.batch import SelfOccBatch
from selfocc_ns.data.label_maps import SemanticLabelSpace, flat_label_ids, label_space_channels, sky_label_id
from selfocc_ns.data.occ3d import IGNORE_ID
from selfocc_ns.model import losses
from selfocc_ns.model.backbone import ImageEncoderConfig
from selfocc_ns.model.field import SelfOccFieldConfig
from selfocc_ns.model.field_grid import FieldGrid, query_field
from selfocc_ns.model.planes import SceneGrid
from selfocc_ns.model.renderer import RenderOutputs, SelfOccRendererConfig
from selfocc_ns.model.rays import ImageRead, eval_lattice_hw, fixed_lattice_px, lattice_colours, lattice_labels
from selfocc_ns.model.tpv import TPVEncoderConfig

CameraRenderHook = Callable[[Cameras], Dict[str, Tensor]]
"""nerfstudio camera -> images [H, W, C] (rgb, depth, accumulation, ...), see `set_camera_render_hook`."""


@dataclass
class SelfOccModelConfig(ModelConfig):
    """SelfOcc (docs/architecture.md). The scene box (`range_m`, `grid_xyz`) and the feature width
    (`image_encoder.fpn_channels`) are set here once and handed to the encoder and the field when they are built."""

    _target: Type = dataclasses.field(default_factory=lambda: SelfOccModel)
    enable_collider: bool = False
    """The batch is not a RayBundle: no collider."""
    range_m: Tuple[float, float, float, float, float, float] = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)
    """Scene box (x_min, y_min, z_min, x_max, y_max, z_max), metres, in the sample's reference frame (ego / LiDAR)."""
    grid_xyz: Tuple[int, int, int] = (257, 257, 25)
    """TPV / decoded grid points along x, y, z (ends included)."""
    image_encoder: ImageEncoderConfig = dataclasses.field(default_factory=ImageEncoderConfig)
    """Backbone + FPN."""
    encoder: TPVEncoderConfig = dataclasses.field(default_factory=TPVEncoderConfig)
    """TPV / BEV lifting."""
    field: SelfOccFieldConfig = dataclasses.field(default_factory=SelfOccFieldConfig)
    """Planes -> SDF / RGB / semantics grid."""
    renderer: SelfOccRendererConfig = dataclasses.field(default_factory=SelfOccRendererConfig)
    """Ray lattices, sampling, NeuS compositing."""
    reprojection_loss_weight: float = 1.0
    """MVS-embedded reprojection (official 1.0)."""
    automask: bool = True
    """Monodepth2 auto-masking in the reprojection loss (official: on in all presets)."""
    rgb_loss_weight: float = 0.1
    """Rendered colour vs the anchor image, 0.85 SSIM + 0.15 L1 (official 0.1; needs the colour head)."""
    eikonal_loss_weight: float = 0.1
    """(|grad sdf| - 1)^2 over ray samples and the whole grid (official 0.1)."""
    eikonal_on_grid: bool = True
    """Include every grid point's gradient in the eikonal loss (official)."""
    hessian_loss_weight: float = 0.01
    """Mean |Hessian| over the grid (official 0.01 for occ and novel depth)."""
    smoothness_loss_weight: float = 0.0
    """Edge-aware smoothness of the mean-normalised `smoothness_of` map (official 0.01 for the depth preset)."""
    smoothness_of: Literal["disparity", "depth"] = "disparity"
    """What the smoothness loss smooths: disparity (Monodepth2), or official depth / (mean depth + 1e-6)."""
    image_read: ImageRead = "pixel_centre"
    """Loss images read at pixel index u - 0.5 (pixel centres), or official u (W - 1) / W (align_corners=True)."""
    semantic_loss_weight: float = 0.1
    """Cross-entropy of volume-rendered class probabilities vs 2D labels (official 0.1; needs labels)."""
    semantic_given_hit: bool = False
    """Not official (False): the semantic CE scores the rendered class probabilities divided by the ray's
    accumulation, so it asks nothing of the opacity (officially a ray whose surface lies beyond the box, or that
    the field lets through, costs up to -log 1e-6 and is pushed to stop inside the box)."""
    semantic_label_space: SemanticLabelSpace = "occ3d"
    """2D labels and head channels: 'occ3d' (18: Occ3D ids + sky) or 'openseed' (the official 21 OpenSeeD ids)."""
    sparsity_loss_weight: float = 0.0
    """Soft sparsity of the SDF grid (official 0.001 for the BEV variant)."""
    sky_free_loss_weight: float = 0.0
    """Not official (0): push the opacity of rays labelled sky (2D labels) to 0, so the sky is no surface in
    the box; sky labels then leave the semantic loss. Needs 2D labels."""
    sky_free_rgb: bool = False
    """Not official: with the sky free-space loss, sky rays also leave the RGB loss (its random background asks for opacity)."""
    free_space_loss_weight: float = 0.0
    """Not official (0): relu(min_sdf - sdf) at the samples rays see through (`losses.free_space_loss`)."""
    free_space_max_opacity: float = 0.1
    """Free-space loss: samples whose cumulative render weight (own included, detached) is below this are seen through."""
    free_space_min_sdf_m: float = 0.0
    """Free-space loss: the SDF margin (metres) asked of seen-through samples."""
    free_space_start_step: int = 0
    """Free-space loss: the training step it starts at (a warm-up lets the surfaces form first)."""
    flat_normal_loss_weight: float = 0.0
    """Not official (0): rays whose 2D label is road, other flat, sidewalk or terrain render an SDF normal pointing
    up (ego z): mean 1 - n_z (`losses.flat_normal_loss`). Needs 2D labels."""
    ego_ground_loss_weight: float = 0.0
    """Not official (0): the SDF under every ego pose of the batch (input keyframe, anchor, sources) is 0 on the
    ground and h at the heights `ego_ground_heights_m` above it (`losses.ego_ground_loss`)."""
    flat_ground_loss_weight: float = 0.0
    """Not official (0): a flat world around the ego. Under the rendered surface of every ray whose 2D label is
    road, other flat, sidewalk or terrain, the SDF is 0 at the ego ground height `ego_ground_z_m` and h at the
    heights `flat_ground_heights_m` relative to it (`losses.flat_ground_points`). A prior, not a measurement:
    wrong where the ground slopes or steps by more than a voxel inside the box. Needs 2D labels."""
    flat_ground_heights_m: Tuple[float, ...] = (-0.5, 0.0)
    """Flat ground loss: heights relative to the ground (metres) where the SDF is asked to equal the height. None
    above the ground by default: a ground ray's rendered point can sit next to an object standing on the ground,
    which a positive height would carve (measured with 0, 0.5, 1: objects seen through, depth abs_rel +0.18)."""
    ego_ground_z_m: float = 0.0
    """Ego and flat ground losses: the ground's height in the ego frame (0: the frame sits on the ground, as the
    embedded world's and the flat-ground baseline's)."""
    ego_ground_heights_m: Tuple[float, ...] = (0.0, 0.5, 1.0)
    """Ego ground loss: heights above the ground (metres) where the SDF is asked to equal the height."""
    seed: int = 42
    """Seed of the per-step ray lattices, jitter and background colours (with step and rank)."""

    @property
    def scene(self) -> SceneGrid:
        return SceneGrid(tuple(self.range_m), tuple(self.grid_xyz))  # type: ignore[arg-type]


def ego2img_matrices(intrinsics: Float[Tensor, "*cams 3 3"], cam2ego: Float[Tensor, "*cams 4 4"]) -> Float[Tensor, "*cams 4 4"]:
    """Homogeneous ego point -> (u w, v w, w, 1) pixel coordinates of the camera."""
    k4 = torch.zeros_like(cam2ego)
    k4[..., :3, :3] = intrinsics
    k4[..., 3, 3] = 1.0
    return k4 @ torch.linalg.inv(cam2ego)


def frame_ego2ref(batch: SelfOccBatch) -> Float[Tensor, "B F 4 4"]:
    """Ego poses of the batch's frames in t's reference frame: t, its anchor, then the anchor's sources.

    From the first camera of each frame (the rig is rigid): ego_k2ref = cam2ref_k inv(cam2ref_t) ego2ref_t."""
    ego2ref = torch.stack([batch.ego2ref_of(b) for b in range(batch.batch_size)])  # B 4 4
    ego2cam = torch.linalg.inv(batch.cam2ego[:, 0]) @ ego2ref  # B 4 4: the rig calibration of camera 0
    cameras = [batch.cam2ego[:, 0], batch.anchor_cam2ego[:, 0]]
    if batch.source_cam2ego is not None:
        cameras += list(batch.source_cam2ego[:, :, 0].unbind(1))
    return torch.stack([cam2ref @ ego2cam for cam2ref in cameras], dim=1)


class SelfOccModel(Model):
    """SelfOcc as a nerfstudio Model (see the module docstring)."""

    config: SelfOccModelConfig

    def populate_modules(self):
        super().populate_modules()
        cfg = self.config
        channels = label_space_channels(cfg.semantic_label_space)  # checked before anything is built
        if cfg.field.num_semantic_classes not in (0, channels):
            raise ValueError(f"semantic_label_space '{cfg.semantic_label_space}' has {channels} classes, but "
                             f"field.num_semantic_classes is {cfg.field.num_semantic_classes} (0 or {channels})")
        feature_dim = cfg.image_encoder.fpn_channels
        self.image_encoder = cfg.image_encoder.setup()
        self.encoder = cfg.encoder.setup(scene=cfg.scene, dim=feature_dim)
        self.field = cfg.field.setup(scene=cfg.scene, feature_dim=feature_dim, bev=cfg.encoder.representation == "bev")
        self.renderer = self.config.renderer.setup()
        self._camera_render_hook: Optional[CameraRenderHook] = None
        if self.config.rgb_loss_weight > 0 and not self.config.field.use_rgb:
            raise ValueError("rgb_loss_weight > 0 needs the colour head (field.use_rgb)")
        if self.config.semantic_loss_weight > 0 and self.config.field.num_semantic_classes == 0:
            raise ValueError("semantic_loss_weight > 0 needs the semantic head (field.num_semantic_classes)")
        if self.config.sky_free_rgb and self.config.sky_free_loss_weight <= 0:
            raise ValueError("sky_free_rgb takes the sky rays out of the RGB loss for the sky free-space loss: it "
                             "needs sky_free_loss_weight > 0")
        if self.config.semantic_given_hit and self.config.semantic_loss_weight <= 0:
            raise ValueError("semantic_given_hit changes how the semantic CE scores the rays: it needs "
                             "semantic_loss_weight > 0")

    @property
    def semantic_channels(self) -> int:
        """Semantic logits per voxel (0 without the semantic head)."""
        return self.config.field.num_semantic_classes

    @property
    def semantic_label_space(self) -> SemanticLabelSpace:
        """What the semantic channels mean (`selfocc_ns.data.label_maps`)."""
        return self.config.semantic_label_space

    @property
    def eval_lattice_fraction(self) -> float:
        """The default depth lattice of `render_depth`, as a fraction of the image."""
        return self.config.renderer.eval_lattice_fraction

    @property
    def uses_semantics(self) -> bool:
        """Whether training needs the 2D labels (semantic, sky free-space, flat-normal or flat-ground loss)."""
        cfg = self.config
        return (cfg.semantic_loss_weight > 0 or cfg.sky_free_loss_weight > 0 or cfg.flat_normal_loss_weight > 0
                or cfg.flat_ground_loss_weight > 0)

    def get_param_groups(self) -> Dict[str, List[torch.nn.Parameter]]:
        """'backbone' (official lr x0.1) and 'model' (neck, lifting, field, NeuS sharpness)."""
        backbone = list(self.image_encoder.backbone_parameters())
        backbone_ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if id(p) not in backbone_ids and p.requires_grad]
        return {"backbone": [p for p in backbone if p.requires_grad], "model": rest}

    # -- encoding ------------------------------------------------------------------------------------
    def encode(self, batch: SelfOccBatch) -> FieldGrid:
        """The decoded field grid of every input keyframe of the batch."""
        b, n = batch.images.shape[:2]
        feats = self.image_encoder(batch.images.flatten(0, 1))
        feats = [f.reshape(b, n, *f.shape[1:]) for f in feats]
        ego2img = ego2img_matrices(batch.intrinsics, batch.cam2ego)
        planes = self.encoder(feats, ego2img, tuple(batch.images.shape[-2:]))
        return self.field.decode(planes)

    def _generator(self, batch: SelfOccBatch) -> torch.Generator:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(hash((self.config.seed, int(batch.step), int(batch.rank))) % (2**62))
        return generator

    def get_outputs(self, batch: SelfOccBatch) -> Dict[str, Any]:  # type: ignore[override]
        grid = self.encode(batch)
        generator = self._generator(batch)
        b, n = batch.anchor_images.shape[:2]
        image_hw = tuple(batch.anchor_images.shape[-2:])
        device = batch.anchor_images.device
        lattice = self.renderer.train_lattices(b, n, image_hw, generator, device)
        render = self.renderer.render_cameras(
            grid, lattice, batch.anchor_intrinsics, batch.anchor_cam2ego, generator=generator, step=int(batch.step)
        )
        outputs: Dict[str, Any] = {
            "grid": grid,
            "render": render,
            "lattice_px": lattice,
            "target_rgb": lattice_colours(batch.anchor_images, lattice, self.config.image_read),
            "depth": render.depth,
            "accumulation": render.accumulation,
        }
        if render.rgb is not None:
            outputs["rgb"] = render.rgb
        if batch.semantics is not None:  # read once for the losses and the training metrics
            outputs["ray_labels"] = lattice_labels(batch.semantics, lattice)
        return outputs

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Any]:
        render: RenderOutputs = outputs["render"]
        metrics = {
            "inv_s": self.renderer.neus_alpha.inv_s().detach(),
            "depth_mean_m": render.depth.detach().mean(),
            "accumulation_mean": render.accumulation.detach().mean(),
            # cameras sit in free space: a negative value says the field has wrapped them in matter
            "camera_sdf_m": query_field(outputs["grid"], batch.cam2ego[..., :3, 3].detach()).sdf.detach().min(),
        }
        if render.rgb is not None:
            mse = F.mse_loss(render.rgb.detach().clamp(0, 1), outputs["target_rgb"])
            metrics["psnr"] = -10.0 * torch.log10(mse.clamp_min(1e-10))
        if render.semantics is not None and "ray_labels" in outputs:
            # a head that renders few classes everywhere shows here long before the occupancy eval
            metrics.update(losses.semantic_ray_scores(render.semantics,
                                                      self._semantic_loss_labels(outputs["ray_labels"])))
        return metrics

    def _semantic_loss_labels(self, labels: Tensor) -> Tensor:
        """The ray labels the semantic CE scores: under the sky free-space loss the sky rays are asked to render
        nothing, so they leave it (ignored)."""
        if self.config.sky_free_loss_weight <= 0:
            return labels
        sky = sky_label_id(self.config.semantic_label_space)
        return torch.where(labels == sky, torch.full_like(labels, IGNORE_ID), labels)

    def get_loss_dict(self, outputs, batch: SelfOccBatch, metrics_dict=None) -> Dict[str, Tensor]:
        cfg = self.config
        render: RenderOutputs = outputs["render"]
        grid: FieldGrid = outputs["grid"]
        target = outputs["target_rgb"]
        loss_dict: Dict[str, Tensor] = {}
        if cfg.reprojection_loss_weight > 0:
            if batch.source_images is None:
                raise ValueError("the reprojection loss needs source images in the batch (training datamanager)")
            reproj, diagnostics = losses.reprojection_loss(
                render.points_m, render.weights, target, outputs["lattice_px"],
                batch.source_images, batch.source_intrinsics, batch.source_cam2ego, automask=cfg.automask,
                image_read=cfg.image_read,
            )
            loss_dict["reprojection_loss"] = cfg.reprojection_loss_weight * reproj
            if metrics_dict is not None:
                metrics_dict.update({f"reprojection/{k}": v for k, v in diagnostics.items()})
        labels = None
        if self.uses_semantics:
            if batch.semantics is None:
                raise ValueError("semantic_loss_weight, sky_free_loss_weight, flat_normal_loss_weight or "
                                 "flat_ground_loss_weight > 0 but the batch has no 2D labels "
                                 "(datamanager.use_semantics)")
            labels = outputs["ray_labels"]
        ground_rays = None  # rays labelled road / other flat / sidewalk / terrain (flat-normal and flat-ground losses)
        if labels is not None and (cfg.flat_normal_loss_weight > 0 or cfg.flat_ground_loss_weight > 0):
            ground_ids = torch.tensor(flat_label_ids(cfg.semantic_label_space), device=labels.device)
            ground_rays = torch.isin(labels, ground_ids)
        sky = sky_label_id(cfg.semantic_label_space)
        if cfg.rgb_loss_weight > 0:
            not_sky = labels != sky if labels is not None and cfg.sky_free_loss_weight > 0 and cfg.sky_free_rgb else None
            loss_dict["rgb_loss"] = cfg.rgb_loss_weight * losses.rgb_loss(render.rgb, target, ray_mask=not_sky)
        if cfg.eikonal_loss_weight > 0:
            grid_gradients = grid.sdf_gradient() if cfg.eikonal_on_grid else None
            loss_dict["eikonal_loss"] = cfg.eikonal_loss_weight * losses.eikonal_loss(render.sdf_gradient, grid_gradients)
        if cfg.hessian_loss_weight > 0:
            loss_dict["hessian_loss"] = cfg.hessian_loss_weight * losses.hessian_loss(grid.sdf_hessian())
        if cfg.smoothness_loss_weight > 0:
            loss_dict["smoothness_loss"] = cfg.smoothness_loss_weight * losses.edge_aware_smoothness(
                render.depth, target, cfg.smoothness_of)
        if cfg.free_space_loss_weight > 0 and int(batch.step) >= cfg.free_space_start_step:
            loss_dict["free_space_loss"] = cfg.free_space_loss_weight * losses.free_space_loss(
                render.sdf, render.weights, cfg.free_space_max_opacity, cfg.free_space_min_sdf_m)
        if cfg.flat_normal_loss_weight > 0:
            assert ground_rays is not None
            loss_dict["flat_normal_loss"] = cfg.flat_normal_loss_weight * losses.flat_normal_loss(
                render.sdf_gradient, render.weights, ground_rays)
        if cfg.flat_ground_loss_weight > 0:
            assert ground_rays is not None and render.points_m is not None and render.weights is not None
            points, heights, counts = losses.flat_ground_points(
                render.points_m, render.weights, ground_rays, grid.range_m, cfg.ego_ground_z_m,
                cfg.flat_ground_heights_m)
            loss_dict["flat_ground_loss"] = cfg.flat_ground_loss_weight * losses.ego_ground_loss(
                query_field(grid, points).sdf[..., 0], heights, counts)
        if cfg.sky_free_loss_weight > 0:
            assert labels is not None
            loss_dict["sky_free_loss"] = cfg.sky_free_loss_weight * losses.sky_free_space_loss(
                render.accumulation, labels, sky)
        if cfg.semantic_loss_weight > 0:
            assert labels is not None
            loss_dict["semantic_loss"] = cfg.semantic_loss_weight * losses.semantic_ce_loss(
                render.semantics, self._semantic_loss_labels(labels), given_hit=cfg.semantic_given_hit)
        if cfg.ego_ground_loss_weight > 0:
            points, heights = losses.ego_ground_points(frame_ego2ref(batch), cfg.ego_ground_z_m, cfg.ego_ground_heights_m)
            loss_dict["ego_ground_loss"] = cfg.ego_ground_loss_weight * losses.ego_ground_loss(
                query_field(grid, points).sdf[..., 0], heights)
        if cfg.sparsity_loss_weight > 0:
            loss_dict["sparsity_loss"] = cfg.sparsity_loss_weight * losses.soft_sparsity_loss(grid.sdf)
        return loss_dict

    # -- evaluation / viewer -------------------------------------------------------------------------
    @torch.no_grad()
    def render_depth(
        self,
        grid: FieldGrid,
        intrinsics: Float[Tensor, "B N 3 3"],
        cam2ego: Float[Tensor, "B N 4 4"],
        image_hw: Tuple[int, int],
        lattice_fraction: Optional[float] = None,
        lattice_px: Optional[Float[Tensor, "h w 2"]] = None,
        read_mask: Optional[Bool[Tensor, "B N h w"]] = None,
    ) -> RenderOutputs:
        """Render the eval lattice (half resolution by default, as the official 450x800) of every camera;
        `lattice_px` (image pixels) replaces the fraction's pixel-centre lattice (e.g. the official lattice).
        `read_mask`: the lattice points the caller reads (the fast renderer renders only those, NaN elsewhere)."""
        if lattice_px is None:
            fraction = self.config.renderer.eval_lattice_fraction if lattice_fraction is None else lattice_fraction
            lattice_px = fixed_lattice_px(image_hw, eval_lattice_hw(image_hw, fraction), intrinsics.device)
        b, n = intrinsics.shape[:2]
        lattice = lattice_px.to(intrinsics.device).expand(b, n, *lattice_px.shape)
        return self.renderer.render_cameras_chunked(grid, lattice, intrinsics, cam2ego, read_mask=read_mask)

    def get_image_metrics_and_images(self, outputs, batch) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        """Images for nerfstudio's writers; the SelfOcc metrics are computed by the pipeline."""
        images = {}
        if "depth" in outputs:
            from nerfstudio.utils import colormaps

            depth = outputs["depth"]
            images["depth"] = colormaps.apply_depth_colormap(depth, near_plane=1.0, far_plane=60.0)
        return {}, images

    def set_camera_render_hook(self, hook: Optional[CameraRenderHook]) -> None:
        """How `get_outputs_for_camera` renders a nerfstudio camera (the viewer attaches one that renders its
        selected sample); None restores the fallback."""
        self._camera_render_hook = hook

    def get_outputs_for_camera(self, camera: Cameras, obb_box=None) -> Dict[str, Tensor]:
        """Render a nerfstudio camera through the attached hook; without one, black images of its size (a
        feed-forward model has no scene of its own to show until some sample has been encoded)."""
        hook = getattr(self, "_camera_render_hook", None)
        if hook is not None:
            return hook(camera)
        height, width = int(camera.height.reshape(-1)[0]), int(camera.width.reshape(-1)[0])
        blank = torch.zeros(height, width, 1, device=camera.camera_to_worlds.device)
        return {"rgb": blank.expand(height, width, 3), "depth": blank, "accumulation": blank}

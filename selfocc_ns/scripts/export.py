"""`selfocc-export`: occupancy grids of a SelfOcc checkpoint, in the Occ3D format and for viewers.

    selfocc-export --load-config outputs/.../config.yml --output-dir exports/val [--samples 10 | TOKEN ...]
        [--split val|train] [--protocol selfocc|occ3d] [--threshold 0.0] [--mesh]

Per exported keyframe, in the Occ3D gts layout (so the folder can be given back as `--gts-dir`):

    <output-dir>/<scene>/<sample_token>/labels.npz   Occ3D semantics (uint8, 17 = free), mask_camera and
                                                     mask_lidar copied from the sample's gt (all ones without)
    <output-dir>/<scene>/<sample_token>/occupancy.ply occupied voxel centres, Occ3D palette colours + label
    <output-dir>/<scene>/<sample_token>/bev.png      bird's-eye view (x forward = up), Occ3D palette
    <output-dir>/<scene>/<sample_token>/mesh.ply     (--mesh) marching cubes of the decoded SDF grid
    <output-dir>/export_<split>.json                 what was exported, options, IoU against the gts

The grids are exactly what `selfocc-eval --tasks occupancy` scores with the same protocol and threshold:
'selfocc' (default) samples the SDF at the official linspace points and applies the official crops,
'occ3d' samples it at the voxel centres without crops (the geometrically clean grid).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
import tyro

from selfocc_ns.data.frames import Frame, SelfOccIndex

LABELS_NAME = "labels.npz"
PLY_NAME = "occupancy.ply"
BEV_NAME = "bev.png"
MESH_NAME = "mesh.ply"
MANIFEST_NAME = "export_{split}.json"
"""The export's manifest, one per split (so both splits can share a folder)."""


@dataclass
class SampleExport:
    """What was written for one keyframe."""

    scene: str
    sample_token: str
    sample_index: int
    """Index of the keyframe in the exported split."""
    occupied_voxels: int
    """Non-free voxels of the grid (= points in the PLY)."""
    has_gt: bool
    """The keyframe has an Occ3D gt: its masks were copied and it was scored."""
    files: Dict[str, str]
    """Written files by kind (labels, ply, bev, mesh), relative to the output folder."""
    iou: Optional[float] = None
    """This keyframe's own geometric IoU against its gt (None without gt or when undefined)."""


def select_indices(index: SelfOccIndex, samples: Sequence[str]) -> List[int]:
    """Keyframe indices of a split from `--samples`.

    () -> every keyframe; one integer N -> N evenly spaced keyframes (all if N >= their number); otherwise
    sample tokens and/or scene names (every keyframe of that scene), in the split's order. An unknown
    name raises, listing a few valid ones.
    """
    total = len(index.samples)
    if not samples:
        return list(range(total))
    if len(samples) == 1 and str(samples[0]).isdigit():
        count = int(samples[0])
        if count <= 0:
            raise ValueError("--samples N needs N >= 1")
        if count >= total:
            return list(range(total))
        return sorted({int(i * total / count) for i in range(count)})
    wanted = set(samples)
    chosen = [i for i in range(total) if _frame_names(index.sample_frame(i)) & wanted]
    found = set().union(*(_frame_names(index.sample_frame(i)) for i in chosen)) if chosen else set()
    missing = sorted(wanted - found)
    if missing:
        known = [index.sample_frame(i).sample_token for i in range(min(3, total))]
        raise ValueError(f"--samples: {missing} are neither sample tokens nor scene names of the "
                         f"{index.split} split (e.g. {known}, scenes {[s.scene_name for s in index.scenes]})")
    return chosen


def _frame_names(frame: Frame) -> set:
    return {frame.scene_name, frame.sample_token}


def sample_folder(output_dir: Path, scene: str, sample_token: str) -> Path:
    """<output_dir>/<scene>/<sample_token>: the Occ3D gts layout."""
    return Path(output_dir) / scene / sample_token


def gt_masks(frame: Frame) -> Optional[Dict[str, np.ndarray]]:
    """mask_camera / mask_lidar of a keyframe's Occ3D gt, None when it has none."""
    from selfocc_ns.data.occ3d import load_labels

    if frame.occ_path is None or not Path(frame.occ_path).is_file():
        return None
    labels = load_labels(frame.occ_path)
    return {"mask_camera": labels["mask_camera"], "mask_lidar": labels.get("mask_lidar", labels["mask_camera"])}


def write_sample(
    output_dir: Path,
    frame: Frame,
    sample_index: int,
    pred: torch.Tensor,
    sdf_grid: Optional[torch.Tensor] = None,
    grid_spacing_m: Sequence[float] = (),
    grid_origin_m: Sequence[float] = (),
    threshold: float = 0.0,
    masks: Optional[Dict[str, np.ndarray]] = None,
    ply_cubes: bool = False,
    bev_pixels_per_voxel: int = 2,
    grid_to_ego: Optional[np.ndarray] = None,
) -> SampleExport:
    """Write labels.npz, occupancy.ply, bev.png (and mesh.ply when `sdf_grid` is given) of one keyframe.

    Args:
        pred: [200, 200, 16] Occ3D class grid (17 = free).
        sdf_grid: [X, Y, Z] decoded SDF grid (metres) for the marching-cubes mesh, or None for no mesh.
        grid_spacing_m, grid_origin_m: its point spacing and the position of point [0, 0, 0] (metres).
        threshold: iso-level of the mesh (the occupancy threshold).
        masks: `gt_masks(frame)`; None writes all-ones masks (every voxel "observed").
        grid_to_ego: 4x4 from the SDF grid's reference frame to the ego frame (mesh vertices); None: the same.
    """
    from selfocc_ns.eval.export_io import write_bev_png, write_mesh_ply, write_occ3d_npz, write_voxel_ply

    folder = sample_folder(output_dir, frame.scene_name, str(frame.sample_token))
    semantics = pred.detach().cpu().numpy().astype(np.uint8)
    masks = masks or {}
    write_occ3d_npz(folder / LABELS_NAME, semantics, masks.get("mask_camera"), masks.get("mask_lidar"))
    occupied = write_voxel_ply(folder / PLY_NAME, semantics, as_cubes=ply_cubes)
    write_bev_png(folder / BEV_NAME, semantics, pixels_per_voxel=bev_pixels_per_voxel)
    files = {"labels": LABELS_NAME, "ply": PLY_NAME, "bev": BEV_NAME}
    if sdf_grid is not None:
        write_mesh_ply(folder / MESH_NAME, sdf_grid.detach().cpu().numpy(), grid_spacing_m, grid_origin_m, threshold,
                       pose=grid_to_ego)
        files["mesh"] = MESH_NAME
    relative = {kind: str(Path(frame.scene_name) / str(frame.sample_token) / name) for kind, name in files.items()}
    return SampleExport(frame.scene_name, str(frame.sample_token), sample_index, occupied, bool(masks), relative)


@dataclass
class SelfOccExport:
    """Export the occupancy predicted by a SelfOcc checkpoint (Occ3D labels.npz, voxel PLY, BEV PNG, mesh)."""

    load_config: Path
    """config.yml of the training run (as for ns-eval); run from the training directory if paths are relative."""
    output_dir: Path
    """Folder to write <scene>/<sample_token>/... into (the Occ3D gts layout)."""
    samples: Tuple[str, ...] = ()
    """Which keyframes: nothing = all of the split; one number N = N evenly spaced; else sample tokens or
    scene names."""
    split: Literal["val", "train"] = "val"
    """Which split of the run's dataset (val = the official val scenes)."""
    protocol: Literal["selfocc", "occ3d"] = "selfocc"
    """'selfocc': official query points and crops (what selfocc-eval scores); 'occ3d': voxel centres, no crops."""
    threshold: float = 0.0
    """Occupied where SDF <= threshold (metres); also the mesh iso-level."""
    mesh: bool = False
    """Also write a marching-cubes mesh of the decoded SDF grid (scikit-image)."""
    ply_cubes: bool = False
    """Write the voxels as solid cubes (8 vertices, 12 triangles each) instead of centre points."""
    bev_pixels_per_voxel: int = 2
    """Size of the BEV PNG: pixels per voxel side."""
    data_dir: Optional[Path] = None
    """Export from another nuScenes root than the one the run trained on."""
    gts_dir: Optional[Path] = None
    """Occ3D gts to copy masks from and score against (default: the run's)."""
    load_step: Optional[int] = None
    """Export with the checkpoint of this step (default: the latest)."""

    def main(self) -> Dict[str, Any]:
        from tqdm import tqdm

        from selfocc_ns.eval.runner import predict_occupancy, write_results_json
        from selfocc_ns.metrics import OccupancyMetricAccumulator
        from selfocc_ns.eval.outputs import check_output_dir
        from selfocc_ns.scripts.eval import load_pipeline

        check_output_dir(self.output_dir, "--output-dir")  # before any work
        config, pipeline, checkpoint, step = load_pipeline(self.load_config, self.split, self.data_dir, self.gts_dir,
                                                            load_step=self.load_step)
        dm, model = pipeline.datamanager, pipeline.model
        index = dm.eval_index
        indices = select_indices(index, self.samples)
        accumulator = OccupancyMetricAccumulator(self.protocol, semantic=model.semantic_channels > 0)
        exported: List[SampleExport] = []
        start = time.perf_counter()
        model.eval()
        batches = tqdm(zip(indices, dm.iter_eval_batches(indices)), total=len(indices), desc="selfocc export",
                       unit="sample")
        with torch.no_grad():
            for sample_index, batch in batches:
                frame = index.sample_frame(sample_index)
                grid = model.encode(batch).select(0)
                ego2ref = batch.ego2ref_of(0)  # the gts are in the ego frame, the grid in the reference frame
                pred, _ = predict_occupancy(grid, self.protocol, self.threshold, ego2ref, model.semantic_label_space)
                masks = gt_masks(frame)
                result = write_sample(
                    self.output_dir, frame, sample_index, pred,
                    sdf_grid=grid.sdf[0, 0] if self.mesh else None, grid_spacing_m=grid.spacing_m,
                    grid_origin_m=grid.range_m[:3], threshold=self.threshold, masks=masks,
                    ply_cubes=self.ply_cubes, bev_pixels_per_voxel=self.bev_pixels_per_voxel,
                    grid_to_ego=torch.linalg.inv(ego2ref.double().cpu()).numpy(),
                )
                if batch.occ_semantics is not None:
                    iou = accumulator.add(pred, batch.occ_semantics[0].cpu(), batch.occ_mask_camera[0].cpu())["iou"]
                    result.iou = None if np.isnan(iou) else float(iou)
                exported.append(result)
        seconds = time.perf_counter() - start
        scored = any(e.has_gt for e in exported)
        metrics = accumulator.summary() if scored else {}
        manifest = {
            "experiment_name": config.experiment_name, "method_name": config.method_name,
            "checkpoint": str(checkpoint), "step": int(step), "split": index.split,
            "protocol": self.protocol, "threshold_m": self.threshold, "seconds": seconds,
            "num_samples": len(exported), "results": metrics, "samples": [asdict(e) for e in exported],
        }
        write_results_json(Path(self.output_dir) / MANIFEST_NAME.format(split=self.split), manifest)
        print(summary_line(manifest, Path(self.output_dir)))
        return manifest


def summary_line(manifest: Dict[str, Any], output_dir: Path) -> str:
    """One line: what was exported where, mean occupied voxels, and the IoU against the gts if scored."""
    samples = manifest["samples"]
    mean_occupied = float(np.mean([s["occupied_voxels"] for s in samples])) if samples else 0.0
    line = (f"exported {len(samples)} keyframes ({manifest['split']}, protocol {manifest['protocol']}, threshold "
            f"{manifest['threshold_m']} m) to {output_dir} in {manifest['seconds']:.1f} s; "
            f"{mean_occupied:.0f} occupied voxels per keyframe")
    results = manifest["results"]
    if "occ/iou" in results:
        line += f"; IoU {100 * results['occ/iou']:.2f}%"
        if "occ/miou" in results:
            line += f", mIoU {100 * results['occ/miou']:.2f}%"
        base = results.get("occ/baseline/flat_ground/iou")
        if base is not None:
            line += f" (flat ground IoU {100 * base:.2f}%)"
        line += f" on {int(results.get('occ/num_samples', 0))} keyframes with gts"
    return line


def entrypoint() -> None:
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(SelfOccExport).main()


if __name__ == "__main__":
    entrypoint()

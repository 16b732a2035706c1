"""`selfocc-bench`: faithful vs fast rendering and evaluation, side by side in one run (docs/rendering.md).

    selfocc-bench --load-config outputs/.../config.yml [--output-path bench.json] [--samples 3] [--skip-training]
        [--geometry selfocc] [--geometry-inv-s 2.718 100] [--geometry-stride 4] [--device auto|cpu|cuda]
    selfocc-bench --geometry selfocc            # no checkpoint: the full preset's geometry only

On the checkpoint's eval samples (the same ones, the same decoded grids, one process), per sample:
- the depth evaluation (`Evaluator`, depth task) with the faithful renderer (`renderer.fast_eval False`: every
  lattice ray, every sample) and the fast one (only the lattice points the LiDAR reads, empty-space skipping,
  early stop): seconds of the renders, field reads per rendered ray, the fraction of rays rendered, peak memory,
  and the depth metrics of both (abs_rel, a1);
- occupancy extraction (`predict_occupancy`: a `grid_sample` read per point vs the separable lattice read) and
  its IoU, and the export writers per sample;
- peak memory of both renderers on whole lattices (the viewer's case) at two lattice fractions;
- the training step split into data, backbone, lifting, field decode, rendering, losses, backward (and the rest).
`--geometry selfocc` times both renderers on a preset's full geometry (grid, box, samples, flags, chunking; no
weights) over a synthetic street SDF (ground plane + boxes) at the given NeuS sharpness, as the depth eval renders
it: 6 cameras 1600x900, the 450x800 lattice, read where a simulated 32-beam LiDAR projects; the faithful render is
timed on a lattice `--geometry-stride` times coarser per axis and scaled by the ray count.

Timings are synchronised on CUDA. Peak memory: CUDA's allocator peak, or on CPU the torch profiler's allocation
records (`PeakMemory`). The JSON has `render/speedup` (faithful / fast seconds of the depth-eval renders) and
`render/max_rel_metric_diff` (the largest relative difference over the reported metrics), from the checkpoint, or
the first geometry run without one.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence, Tuple

import torch
import tyro

REPORTED_DEPTH_METRICS = ("abs_rel", "a1")
"""Depth metrics whose fast / faithful difference is reported (raw, over all cameras)."""


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory allocated by torch inside a block, MB: CUDA's allocator peak above the start, or on CPU the
    running sum, in time order, of the allocations and frees the torch profiler records (`profile_memory`; an op's
    own temporaries are netted within it). Profiling slows small ops: time separately."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        from torch.profiler import ProfilerActivity, profile

        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
            return
        self._profile.__exit__(*exc)
        events = sorted((e for e in self._profile.events() if e.self_cpu_memory_usage),
                        key=lambda e: e.time_range.start)
        running = peak = 0
        for event in events:
            running += event.self_cpu_memory_usage
            peak = max(peak, running)
        self.peak_mb = peak / 2**20


@contextmanager
def replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """`owner.name` is `value` inside the block (an instance attribute), then what it was."""
    had_own = name in vars(owner)
    before = vars(owner).get(name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if had_own:
            setattr(owner, name, before)
        else:
            delattr(owner, name)


@contextmanager
def timed_calls(owner: Any, name: str, seconds: List[float], device: torch.device,
                results: Optional[list] = None) -> Iterator[None]:
    """Time (synchronised) every call of `owner.name` inside the block; keep the results when asked."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        synchronise(device)
        start = time.perf_counter()
        out = original(*args, **kwargs)
        synchronise(device)
        seconds.append(time.perf_counter() - start)
        if results is not None:
            results.append(out)
        return out

    with replaced(owner, name, wrapper):
        yield


@contextmanager
def renderer_mode(renderer, fast: bool) -> Iterator[None]:
    """The renderer with `fast_eval` set for the block."""
    before = renderer.config.fast_eval
    renderer.config.fast_eval = fast
    try:
        yield
    finally:
        renderer.config.fast_eval = before


def progress(message: str) -> None:
    print(f"[selfocc-bench] {message}", file=sys.stderr, flush=True)


def relative_difference(fast: float, faithful: float) -> float:
    """|fast - faithful| / |faithful| (0 when both are 0)."""
    if fast == faithful:
        return 0.0
    return abs(fast - faithful) / max(abs(faithful), 1e-12)


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


# ----------------------------------------------------------------------------------------------
# On a checkpoint
# ----------------------------------------------------------------------------------------------


def bench_checkpoint(pipeline, samples: int, device: torch.device, fractions: Tuple[float, float]) -> Dict[str, Any]:
    """Depth eval, occupancy extraction, export and memory, faithful vs fast, on `samples` eval keyframes."""
    from functools import partial

    from selfocc_ns.eval.runner import Evaluator, depth_only_grid, predict_occupancy
    from selfocc_ns.metrics import OccupancyMetricAccumulator
    from selfocc_ns.scripts.export import select_indices, write_sample

    model, dm = pipeline.model, pipeline.datamanager
    index = dm.eval_index
    indices = select_indices(index, [str(samples)])
    options = pipeline.eval_options(tasks=("depth",), flip=False, baseline=False)
    methods = {"faithful": False, "fast": True}
    evaluators = {name: Evaluator(model, options, index.cameras) for name in methods}
    seconds: Dict[str, List[float]] = {f"{n}/{part}": [] for n in methods for part in ("depth", "occupancy")}
    seconds.update({"encode": [], "export": []})
    peak = {name: 0.0 for name in methods}
    samples_per_ray: Dict[str, List[float]] = {name: [] for name in methods}
    rays_rendered: Dict[str, List[float]] = {name: [] for name in methods}
    protocol = options.occupancy_protocol
    occ = {name: OccupancyMetricAccumulator(protocol, semantic=model.semantic_channels > 0) for name in methods}
    occupancy_fns = {"faithful": partial(predict_occupancy, reads="points"), "fast": predict_occupancy}
    has_occ = True
    with torch.no_grad(), tempfile.TemporaryDirectory() as export_dir:
        for number, (sample_index, batch) in enumerate(zip(indices, dm.iter_eval_batches(indices))):
            progress(f"sample {number + 1}/{len(indices)}: encode, depth eval (faithful, fast), occupancy, export")
            with timed_calls(model, "encode", seconds["encode"], device):
                grid = model.encode(batch)
            for name, fast in methods.items():
                renders: list = []
                # the same decoded grid for both renderers
                with renderer_mode(model.renderer, fast), replaced(model, "encode", lambda _batch: grid), \
                        timed_calls(model, "render_depth", seconds[f"{name}/depth"], device, renders):
                    evaluators[name].add(batch)
                if number == 0:  # peak memory of the same eval, in an untimed pass
                    with renderer_mode(model.renderer, fast), replaced(model, "encode", lambda _batch: grid), \
                            PeakMemory(device) as memory:
                        Evaluator(model, options, index.cameras).add(batch)
                    peak[name] = memory.peak_mb
                for render in renders:
                    per_ray, fraction = rendered_samples_per_ray(render, model.renderer.config.num_samples)
                    samples_per_ray[name].append(per_ray)
                    rays_rendered[name].append(fraction)
            item, ego2ref = grid.select(0), batch.ego2ref_of(0)
            for name, predict in occupancy_fns.items():
                synchronise(device)
                start = time.perf_counter()
                pred, _ = predict(item, protocol, options.occupancy_threshold, ego2ref, model.semantic_label_space)
                synchronise(device)
                seconds[f"{name}/occupancy"].append(time.perf_counter() - start)
                if batch.occ_semantics is None:
                    has_occ = False
                else:
                    occ[name].add(pred, batch.occ_semantics[0].cpu(), batch.occ_mask_camera[0].cpu())
            start = time.perf_counter()
            write_sample(Path(export_dir), index.sample_frame(sample_index), sample_index, pred)
            seconds["export"].append(time.perf_counter() - start)

    report: Dict[str, Any] = {"checkpoint/num_samples": len(indices),
                              "checkpoint/num_samples_per_ray": model.renderer.config.num_samples}
    metrics = {name: evaluator.results() for name, evaluator in evaluators.items()}
    diffs = {}
    for metric in REPORTED_DEPTH_METRICS:
        key = f"depth/raw/{metric}"
        for name in methods:
            report[f"{name}/{key}"] = metrics[name][key]
        diffs[key] = relative_difference(metrics["fast"][key], metrics["faithful"][key])
    if has_occ:
        occ_results = {name: acc.summary() for name, acc in occ.items()}
        for name in methods:
            report[f"{name}/occ/iou"] = occ_results[name]["occ/iou"]
        diffs["occ/iou"] = relative_difference(occ_results["fast"]["occ/iou"], occ_results["faithful"]["occ/iou"])
    for key, values in seconds.items():
        report[f"{key}/seconds_per_sample"] = mean(values)
    for name in methods:
        report[f"{name}/depth/samples_per_ray"] = mean(samples_per_ray[name])
        report[f"{name}/depth/rays_rendered"] = mean(rays_rendered[name])
        report[f"{name}/depth/peak_memory_mb"] = peak[name]
    report["render/speedup"] = report["faithful/depth/seconds_per_sample"] / report["fast/depth/seconds_per_sample"]
    report["occupancy/speedup"] = (report["faithful/occupancy/seconds_per_sample"]
                                   / report["fast/occupancy/seconds_per_sample"])
    report.update({f"render/rel_diff/{k}": v for k, v in diffs.items()})
    report["render/max_rel_metric_diff"] = max(diffs.values())

    # peak memory at two lattice sizes, one sample (whole lattices: the viewer's and ns-render's case)
    progress(f"peak memory at lattice fractions {fractions}")
    batch = next(dm.iter_eval_batches(indices[:1]))
    with torch.no_grad():
        grid = depth_only_grid(model.encode(batch))
        image_hw = tuple(batch.anchor_images.shape[-2:])
        for fraction in fractions:
            for name, fast in methods.items():
                with renderer_mode(model.renderer, fast), PeakMemory(device) as memory:
                    model.render_depth(grid, batch.anchor_intrinsics, batch.anchor_cam2ego, image_hw, fraction)
                report[f"memory/{name}/lattice_{fraction:g}/peak_mb"] = memory.peak_mb
    return report


# ----------------------------------------------------------------------------------------------
# The training step
# ----------------------------------------------------------------------------------------------


TRAINING_PARTS = ("data", "backbone", "lifting", "field decode", "rendering", "losses", "backward")
"""The parts of a training step (`other`: the rest of the forward pass, e.g. lattice colour reads)."""


def bench_training_step(pipeline, steps: int, device: torch.device) -> Dict[str, float]:
    """Seconds per training step and part (mean over `steps` after one warm-up step), by timing the calls the
    model makes (rendering = the camera render; losses include the reprojection loss's image reads). No optimiser
    step is taken, and the state the forward passes move (batch-norm statistics) is restored afterwards."""
    model, dm = pipeline.model, pipeline.datamanager
    parts: Dict[str, List[float]] = {part: [] for part in TRAINING_PARTS + ("other",)}
    targets = [(dm, "next_train", "data"), (model.image_encoder, "forward", "backbone"),
               (model.encoder, "forward", "lifting"), (model.field, "decode", "field decode"),
               (model.renderer, "render_cameras", "rendering"), (model, "get_loss_dict", "losses")]
    state = {key: value.clone() for key, value in pipeline.state_dict().items()}  # train mode moves BN statistics
    pipeline.train()
    try:
        for step in range(steps + 1):
            times: Dict[str, List[float]] = {part: [] for part in TRAINING_PARTS + ("other",)}
            synchronise(device)
            forward_start = time.perf_counter()
            with contextlib_nested([timed_calls(owner, name, times[part], device) for owner, name, part in targets]):
                _, loss_dict, _ = pipeline.get_train_loss_dict(step=step)
            synchronise(device)
            forward_s = time.perf_counter() - forward_start
            times["other"].append(forward_s - sum(sum(times[part]) for part in TRAINING_PARTS))
            loss = sum(loss_dict.values())
            synchronise(device)
            start = time.perf_counter()
            loss.backward()
            synchronise(device)
            times["backward"].append(time.perf_counter() - start)
            pipeline.zero_grad(set_to_none=True)
            if step > 0:  # the first step warms caches and allocators
                for part in parts:
                    parts[part].append(sum(times[part]))
    finally:
        pipeline.load_state_dict(state)
        pipeline.zero_grad(set_to_none=True)
        pipeline.eval()
    report = {f"train/{part.replace(' ', '_')}/seconds": mean(values) for part, values in parts.items()}
    report["train/step/seconds"] = sum(report.values())
    return report


@contextmanager
def contextlib_nested(managers: Sequence) -> Iterator[None]:
    with ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield


# ----------------------------------------------------------------------------------------------
# On a preset's full geometry
# ----------------------------------------------------------------------------------------------


STREET_BOXES = ((10.0, 4.0, 2.2, 1.0, 1.6), (-7.0, -6.0, 1.0, 2.5, 1.8), (18.0, -9.0, 4.0, 1.2, 3.5),
                (4.0, 16.0, 6.0, 3.0, 8.0), (-20.0, 12.0, 3.0, 8.0, 6.0), (30.0, 25.0, 5.0, 5.0, 12.0))
"""(centre x, centre y, half length x, half width y, top z) of the street's boxes, metres (on the ground z = 0)."""


def street_sdf(points_m: torch.Tensor, boxes=STREET_BOXES) -> torch.Tensor:
    """A plausible decoded SDF: the ground z = 0 united with boxes standing on it (min of the parts' SDFs; each box's
    is max of its slabs, exact inside and on the faces' normals, a lower bound near edges)."""
    sdf = points_m[..., 2].clone()
    for cx, cy, hx, hy, top in boxes:
        box = torch.maximum(torch.maximum((points_m[..., 0] - cx).abs() - hx, (points_m[..., 1] - cy).abs() - hy),
                            points_m[..., 2] - top)
        sdf = torch.minimum(sdf, box)
    return sdf


def street_distance_m(origins: torch.Tensor, directions: torch.Tensor, boxes=STREET_BOXES) -> torch.Tensor:
    """Exact distance along each ray [R, 3] to the street (ground and boxes ray-cast; inf where nothing is hit)."""
    from selfocc_ns.model.rays import intersect_aabb_torch

    distance = torch.full(origins.shape[:1], math.inf, dtype=origins.dtype)
    down = directions[:, 2] < 0
    ground = -origins[:, 2] / torch.where(down, directions[:, 2], -torch.ones_like(directions[:, 2]))
    distance = torch.where(down & (ground > 0), ground, distance)
    for cx, cy, hx, hy, top in boxes:
        near, _, hit = intersect_aabb_torch(origins, directions, (cx - hx, cy - hy, -10.0, cx + hx, cy + hy, top))
        distance = torch.where(hit & (near < distance), near, distance)
    return distance


def spinning_lidar_points(height_m: float = 1.84, beams: int = 32, azimuths: int = 1084,
                          elevation_deg: Tuple[float, float] = (-30.67, 10.67),
                          max_range_m: float = 70.0) -> torch.Tensor:
    """Ego-frame returns [P, 3] of a nuScenes-like 32-beam spinning LiDAR (about 34k rays) on the street."""
    elevation = torch.deg2rad(torch.linspace(*elevation_deg, beams, dtype=torch.float64))
    azimuth = torch.linspace(0.0, 2.0 * math.pi, azimuths + 1, dtype=torch.float64)[:-1]
    el, az = torch.meshgrid(elevation, azimuth, indexing="ij")
    directions = torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=-1).reshape(-1, 3)
    origins = torch.tensor([0.0, 0.0, height_m], dtype=torch.float64).expand_as(directions)
    distance = street_distance_m(origins, directions)
    keep = distance < max_range_m
    return (origins[keep] + directions[keep] * distance[keep, None]).float()


def nuscenes_like_rig(image_hw=(900, 1600), height_m: float = 1.6) -> Tuple[torch.Tensor, torch.Tensor]:
    """Six cameras 60 deg apart at the ego origin, `height_m` up, level, nuScenes-like focal length (1266 px)."""
    poses = []
    for yaw_deg in (0, -55, 55, 180, -110, 110):
        yaw = math.radians(yaw_deg)
        forward = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
        right = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0])
        pose = torch.eye(4)
        pose[:3, 0], pose[:3, 1], pose[:3, 2] = right, torch.linalg.cross(forward, right), forward
        pose[:3, 3] = torch.tensor([0.0, 0.0, height_m])
        poses.append(pose)
    k = torch.tensor([[1266.0, 0.0, image_hw[1] / 2], [0.0, 1266.0, image_hw[0] / 2], [0.0, 0.0, 1.0]])
    return torch.stack(poses)[None], k.expand(1, 6, 3, 3)


def timed_render(renderer, grid, lattice_px, intrinsics, cam2ego, device, fast: bool, read_mask=None):
    """(render, seconds, peak memory MB) of synchronised `render_cameras_chunked` calls: timed, then rendered again
    for the memory (the profiler behind `PeakMemory` slows small ops), except the slow faithful one, measured once."""
    def render():
        return renderer.render_cameras_chunked(grid, lattice_px, intrinsics, cam2ego, fast=fast, read_mask=read_mask)

    memory = PeakMemory(device)
    with torch.no_grad(), ExitStack() as stack:
        if not fast:
            stack.enter_context(memory)
        synchronise(device)
        start = time.perf_counter()
        out = render()
        synchronise(device)
        seconds = time.perf_counter() - start
    if fast:
        with torch.no_grad(), memory:
            render()
    return out, seconds, memory.peak_mb


def rendered_samples_per_ray(render, num_samples: int) -> Tuple[float, float]:
    """(field reads per rendered ray, fraction of the lattice rendered) of a render (faithful: S, 1)."""
    if render.samples_evaluated is None:
        return float(num_samples), 1.0
    rendered = ~torch.isnan(render.depth[..., 0])
    per_ray = render.samples_evaluated[..., 0][rendered]
    return (float(per_ray.mean()) if per_ray.numel() else 0.0), float(rendered.float().mean())


def bench_geometry(preset: str, inv_s: float, stride: int, device: torch.device,
                   full_hw: Tuple[int, int] = (450, 800)) -> Dict[str, Any]:
    """Both renderers on a preset's geometry (grid, box, samples, flags, chunking) over the street SDF at NeuS
    sharpness `inv_s`, as the depth eval renders: a 6-camera 1600x900 rig, the 450x800 lattice, read where a
    simulated 32-beam LiDAR projects (`lattice_read_mask`). The faithful render (all rays) is timed on the
    450/s x 800/s lattice and scaled by the ray count; the fast one is timed on the full lattice; the metrics of
    both are compared on the LiDAR points read from the coarse lattice (the same rays for both)."""
    from selfocc_ns import methods as registry
    from selfocc_ns.eval.runner import lidar_read_mask, read_lidar_pairs
    from selfocc_ns.metrics.depth import depth_errors, project_lidar
    from selfocc_ns.model.field_grid import FieldGrid
    from selfocc_ns.model.planes import grid_points_m
    from selfocc_ns.model.rays import fixed_lattice_px

    model_config = getattr(registry, preset.replace("-", "_")).config.pipeline.model
    renderer = model_config.renderer.setup().to(device).eval()
    with torch.no_grad():
        renderer.neus_alpha.variance.fill_(math.log(inv_s) / 10.0)
    axes = grid_points_m(model_config.range_m, model_config.grid_xyz)
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    grid = FieldGrid(street_sdf(points)[None, None].to(device), tuple(model_config.range_m), 0, 0,
                     fd_boundary=model_config.field.fd_boundary)
    image_hw = (900, 1600)
    coarse_hw = (max(1, full_hw[0] // stride), max(1, full_hw[1] // stride))
    cam2ego, intrinsics = (t.to(device) for t in nuscenes_like_rig(image_hw))
    lidar = spinning_lidar_points()
    projections = [[project_lidar(lidar, cam2ego[0, c].cpu(), intrinsics[0, c].cpu(), image_hw, min_depth_m=1.0)
                    for c in range(6)]]
    prefix = f"geometry/{preset}/inv_s_{inv_s:g}"
    report: Dict[str, Any] = {f"{prefix}/lidar_points": int(lidar.shape[0])}

    def lattice_of(hw):
        return fixed_lattice_px(image_hw, hw, device).expand(1, 6, *hw, 2)

    coarse_mask = lidar_read_mask(projections, coarse_hw, image_hw, "pixel_centre").to(device)
    errors, preds = {}, {}
    for name, fast in (("faithful", False), ("fast", True)):
        render, seconds, peak_mb = timed_render(renderer, grid, lattice_of(coarse_hw), intrinsics, cam2ego, device,
                                                fast, coarse_mask)
        depth = render.depth[0, ..., 0].cpu()
        pairs = [read_lidar_pairs(depth[c], projections[0][c], image_hw, "pixel_centre") for c in range(6)]
        preds[name] = torch.cat([p for p, _ in pairs])
        truth = torch.cat([g for _, g in pairs])
        errors[name] = depth_errors(preds[name].clamp(1e-3, 80.0), truth)
        if fast:  # timed again on the whole 450x800 lattice (the read fraction is smaller there)
            full_mask = lidar_read_mask(projections, full_hw, image_hw, "pixel_centre").to(device)
            render, seconds, peak_mb = timed_render(renderer, grid, lattice_of(full_hw), intrinsics, cam2ego, device,
                                                    fast, full_mask)
        else:
            seconds *= (full_hw[0] * full_hw[1]) / (coarse_hw[0] * coarse_hw[1])
        per_ray, fraction = rendered_samples_per_ray(render, renderer.config.num_samples)
        report.update({f"{prefix}/{name}/seconds_per_sample": seconds, f"{prefix}/{name}/peak_memory_mb": peak_mb,
                       f"{prefix}/{name}/samples_per_ray": per_ray, f"{prefix}/{name}/rays_rendered": fraction})
        for metric in REPORTED_DEPTH_METRICS:
            report[f"{prefix}/{name}/{metric}"] = float(errors[name][metric])
    report[f"{prefix}/speedup"] = (report[f"{prefix}/faithful/seconds_per_sample"]
                                   / report[f"{prefix}/fast/seconds_per_sample"])
    report[f"{prefix}/max_rel_metric_diff"] = max(
        relative_difference(report[f"{prefix}/fast/{m}"], report[f"{prefix}/faithful/{m}"])
        for m in REPORTED_DEPTH_METRICS)
    report[f"{prefix}/max_rel_depth_diff"] = float(((preds["fast"] - preds["faithful"]).abs()
                                                    / preds["faithful"].abs().clamp_min(1e-3)).max())
    return report


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def format_table(report: Dict[str, Any]) -> str:
    """The report as aligned `key  value` lines, grouped by their first path element."""
    lines, group = [], None
    width = max((len(k) for k in report), default=10)
    for key in sorted(report):
        head = key.split("/")[0]
        if head != group:
            lines.append("")
            group = head
        value = report[key]
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines).strip("\n")


@dataclass
class SelfOccBench:
    """Faithful vs fast rendering and evaluation on one checkpoint (and optionally a preset's full geometry)."""

    load_config: Optional[Path] = None
    """config.yml of a training run (as for ns-eval); without it only --geometry runs."""
    output_path: Optional[Path] = None
    """Write the report here as JSON."""
    samples: int = 3
    """Eval keyframes (evenly spaced over the split)."""
    split: Literal["val", "train"] = "val"
    """Which split of the run's dataset to evaluate."""
    skip_training: bool = False
    """Do not time the training step."""
    training_steps: int = 2
    """Training steps timed (after one warm-up step)."""
    memory_fractions: Tuple[float, float] = (0.25, 0.5)
    """Two depth-lattice fractions at which the peak memory of both renderers is measured."""
    geometry: Tuple[str, ...] = ()
    """Presets whose full geometry to time on the synthetic street (e.g. selfocc); none by default."""
    geometry_inv_s: Tuple[float, ...] = (2.718, 100.0)
    """NeuS sharpness of the street runs (2.718: the untrained value)."""
    geometry_stride: int = 4
    """The faithful full-geometry render is timed on a lattice this many times coarser per axis (scaled up)."""
    geometry_lattice_hw: Tuple[int, int] = (450, 800)
    """Depth lattice of the full-geometry runs (the official 450x800 on 900x1600 images)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run (auto: CUDA when there)."""

    def main(self, pipeline=None) -> Dict[str, Any]:
        """Run and print the bench; `pipeline` (already loaded from `load_config`) skips loading it again."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("selfocc-bench: --device cuda, but torch sees no CUDA device")
        device = torch.device("cuda" if self.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if self.device == "auto" else self.device))
        if self.load_config is not None and not Path(self.load_config).is_file():
            raise SystemExit(f"selfocc-bench: no config at {self.load_config} (give the config.yml of a training run, "
                             "as for ns-eval, or only --geometry selfocc for random weights)")
        if self.load_config is None and not self.geometry:
            raise SystemExit("selfocc-bench: nothing to measure; give --load-config and/or --geometry (e.g. selfocc)")
        report: Dict[str, Any] = {"device": device.type, "torch_threads": torch.get_num_threads(),
                                  "memory_measure": "cuda max_memory_allocated" if device.type == "cuda"
                                  else "torch profiler allocations (profile_memory), running sum"}
        if self.load_config is not None:
            if pipeline is None:
                from selfocc_ns.scripts.eval import load_pipeline

                progress(f"loading {self.load_config}")
                config, pipeline, checkpoint, step = load_pipeline(Path(self.load_config), self.split, max_workers=0)
                report.update({"checkpoint": str(checkpoint), "step": int(step), "method": config.method_name})
            pipeline.to(device)
            pipeline.eval()
            report["inv_s"] = float(pipeline.model.renderer.neus_alpha.inv_s().detach())
            report.update(bench_checkpoint(pipeline, self.samples, device, self.memory_fractions))
            if not self.skip_training:
                progress(f"training step: {self.training_steps} steps after a warm-up step")
                report.update(bench_training_step(pipeline, self.training_steps, device))
        for preset in self.geometry:
            for inv_s in self.geometry_inv_s:
                progress(f"{preset} geometry, inv_s {inv_s:g}: faithful on a 1/{self.geometry_stride} lattice, fast")
                report.update(bench_geometry(preset, inv_s, self.geometry_stride, device, self.geometry_lattice_hw))
        if "render/speedup" not in report:  # no checkpoint: the first geometry run's
            base = f"geometry/{self.geometry[0]}/inv_s_{self.geometry_inv_s[0]:g}"
            report["render/speedup"] = report[f"{base}/speedup"]
            report["render/max_rel_metric_diff"] = report[f"{base}/max_rel_metric_diff"]
        print(format_table(report))
        if self.output_path is not None:
            from selfocc_ns.eval.runner import write_results_json

            write_results_json(Path(self.output_path), report)
            progress(f"wrote {self.output_path}")
        return report


def entrypoint() -> None:
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(SelfOccBench).main()


if __name__ == "__main__":
    entrypoint()

"""`selfocc-synth OUT_DIR [--scenes 2 --keyframes 10 --sweeps-per-gap 2 --width 400 --height 225 --seed 0 ...]`:
write the embedded synthetic world as a nuScenes dataroot, print progress, total time and a summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tyro

from selfocc_ns.data.synthetic.generate import WorldConfig, generate_world


@dataclass
class SynthCommand:
    """Generate the embedded synthetic world (real nuScenes on-disk format, Occ3D gts, 2D labels, truth)."""

    out_dir: tyro.conf.Positional[Path]
    """Output folder: becomes the nuScenes dataroot (`--data-dir` of the nuscenes-data dataparser)."""
    world: tyro.conf.OmitArgPrefixes[WorldConfig] = field(default_factory=WorldConfig)
    """What to generate."""
    quiet: bool = False
    """Only print the final summary."""

    def main(self) -> dict:
        summary = generate_world(self.out_dir, self.world, progress=not self.quiet)
        for line in summary_lines(summary):
            print(f"[selfocc-synth] {line}")
        return summary


def summary_lines(summary: dict) -> list:
    """A short human summary of `generate_world`'s result."""
    w, h = summary["image_size"]
    scenes = ", ".join(f"{n} ({summary['splits'][n]})" for n in summary["scenes"])
    speeds = ", ".join(f"{v:.1f}" for v in summary["ego_speed_mps"].values())
    return [
        f"{summary['version']} scenes: {scenes}; {summary['keyframes']} keyframes, {summary['frames']} frames, {w}x{h}",
        f"wrote {summary['images']} images (+ 2D labels), {summary['frames']} LiDAR sweeps "
        f"(~{summary['lidar_points_per_sweep']:.0f} points), {summary['keyframes']} Occ3D gts, "
        f"{summary['sample_annotations']} box annotations",
        f"occupied Occ3D classes: {', '.join(summary['occupied_classes'])}; ego speed {speeds} m/s",
        f"done in {summary['seconds']:.1f} s ({summary['workers']} workers) -> {summary['out_dir']} "
        f"(full summary in truth/summary.json)",
    ]


def entrypoint() -> None:
    tyro.cli(SynthCommand).main()


if __name__ == "__main__":
    entrypoint()

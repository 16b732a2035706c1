"""`selfocc-synth OUT_DIR [--scenes 2 --keyframes 10 --sweeps-per-gap 2 --width 400 --height 225 --seed 0 ...]`:
write the embedded synthetic world as a nuScenes dataroot, print progress, total time and a summary."""

from __future__ import annotations

import json
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
        print(json.dumps(summary, indent=2))
        print(f"[selfocc-synth] wrote {summary['images']} images, {summary['frames']} LiDAR sweeps and "
              f"{summary['keyframes']} Occ3D gts to {summary['out_dir']} in {summary['seconds']:.1f} s")
        return summary


def entrypoint() -> None:
    tyro.cli(SynthCommand).main()


if __name__ == "__main__":
    entrypoint()

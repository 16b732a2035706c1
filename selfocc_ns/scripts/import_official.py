"""`selfocc-import-official`: a released official SelfOcc checkpoint as a nerfstudio run of the matching preset.

    selfocc-import-official --checkpoint model_state_dict.pth --preset occ --output-dir runs/official-occ \
        --data-dir /data/nuscenes --version v1.0-trainval

writes

    <output-dir>/config.yml                              the preset's TrainerConfig (selfocc, selfocc-depth or
                                                         selfocc-novel-depth), dataparser options as given
    <output-dir>/nerfstudio_models/step-000000000.ckpt   nerfstudio's checkpoint layout (step, pipeline state)

which `ns-eval`, `selfocc-eval`, `ns-viewer` and `selfocc-export` load with `--load-config <output-dir>/config.yml`.
The checkpoint may be the bare state dict or `{'state_dict': ...}`. Every key is checked against the preset's model
first (unknown, missing and mis-shaped keys are listed in one error, with the expected shapes; the frozen aabb must be
the preset's scene box): on any error nothing is written. The backbone is not downloaded (its weights are in the
checkpoint). The conversion is `selfocc_ns.model.official` (layout changes only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Literal

import torch
import tyro
from torch import Tensor

from selfocc_ns.data.nuscenes import SelfOccNuScenesDataParserConfig
from selfocc_ns.trainer import SelfOccTrainerConfig

OfficialPreset = Literal["occ", "depth", "novel-depth"]
CHECKPOINT_NAME = "step-000000000.ckpt"


def preset_config(preset: OfficialPreset, dataparser: SelfOccNuScenesDataParserConfig) -> SelfOccTrainerConfig:
    """The TrainerConfig of the preset named after an official config, with this dataparser and no backbone
    download (the official checkpoint holds the backbone)."""
    from selfocc_ns.configs import nuscenes_depth, nuscenes_novel_depth, nuscenes_occ

    module = {"occ": nuscenes_occ, "depth": nuscenes_depth, "novel-depth": nuscenes_novel_depth}[preset]
    config = module.trainer_config()
    config.pipeline.datamanager.dataparser = dataclasses.replace(
        dataparser, data_dir=Path(dataparser.data_dir).expanduser().resolve()
    )
    encoder = config.pipeline.model.image_encoder
    encoder.pretrained, encoder.weights_path = False, None
    config.experiment_name = f"official-{preset}"
    return config


def build_model(model_config):
    """A `SelfOccModel` of this config on the CPU (no data needed: its scene box is the config's range)."""
    from nerfstudio.data.scene_box import SceneBox

    aabb = torch.tensor([list(model_config.range_m[:3]), list(model_config.range_m[3:])])
    return model_config.setup(scene_box=SceneBox(aabb=aabb), num_train_data=0, metadata={})


def nerfstudio_checkpoint(model_state: Dict[str, Tensor], step: int = 0) -> Dict[str, object]:
    """nerfstudio's checkpoint layout (Trainer.save_checkpoint) for a model state: the pipeline state has the
    model under `_model.`; no optimizer, scheduler or grad-scaler state (a fine-tuning run starts them fresh)."""
    return {
        "step": step,
        "pipeline": {f"_model.{key}": value for key, value in model_state.items()},
        "optimizers": {},
        "schedulers": {},
        "scalers": {},
    }


def import_official(
    checkpoint: Path, preset: OfficialPreset, output_dir: Path, dataparser: SelfOccNuScenesDataParserConfig
) -> Path:
    """Check and convert an official checkpoint, then write the run (see the module docstring); returns the
    config.yml path. Raises before writing anything when the checkpoint or the output folder is not usable."""
    from selfocc_ns.model.official import OfficialCheckpointError, load_official_state_dict, unwrap_state_dict

    output_dir = Path(output_dir).expanduser().resolve()
    if (output_dir / "config.yml").exists() or (output_dir / "nerfstudio_models").exists():
        raise FileExistsError(f"{output_dir} already holds a run (config.yml or nerfstudio_models/): choose a new "
                              "folder")
    checkpoint = Path(checkpoint).expanduser()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint file {checkpoint}")
    try:
        loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file: one clear message instead of a pickle traceback
        raise OfficialCheckpointError(f"cannot read {checkpoint} as a torch checkpoint: {error}") from error
    state = unwrap_state_dict(loaded)
    config = preset_config(preset, dataparser)
    config.run_dir = output_dir
    model = build_model(config.pipeline.model)
    load_official_state_dict(model, state)  # raises with every offending key; loads nothing then

    config.save_config()
    checkpoint_dir = config.get_checkpoint_dir()
    checkpoint_dir.mkdir(parents=True, exist_ok=False)
    torch.save(nerfstudio_checkpoint(model.state_dict()), checkpoint_dir / CHECKPOINT_NAME)
    return output_dir / "config.yml"


@dataclass
class ImportOfficial:
    """Convert a released official SelfOcc checkpoint into a nerfstudio run of the matching preset."""

    checkpoint: Path
    """The official `model_state_dict.pth` (bare state dict or {'state_dict': ...})."""
    preset: OfficialPreset
    """Which official config it was trained with: occ (selfocc), depth (selfocc-depth), novel-depth."""
    output_dir: Path
    """A new folder for config.yml and nerfstudio_models/ (refused if it already holds a run)."""
    dataparser: tyro.conf.OmitArgPrefixes[SelfOccNuScenesDataParserConfig] = field(
        default_factory=SelfOccNuScenesDataParserConfig
    )
    """The nuScenes dataparser the run evaluates on (--data-dir, --version, --gts-dir, ...)."""

    def main(self) -> Path:
        config_path = import_official(self.checkpoint, self.preset, self.output_dir, self.dataparser)
        print(f"[selfocc-import-official] wrote {config_path} and {config_path.parent / 'nerfstudio_models'}")
        print(f"[selfocc-import-official] next: selfocc-eval --load-config {config_path}")
        return config_path


def entrypoint() -> None:
    from selfocc_ns.model.official import OfficialCheckpointError

    try:
        tyro.cli(ImportOfficial).main()
    except (OfficialCheckpointError, FileExistsError, FileNotFoundError) as error:
        raise SystemExit(f"selfocc-import-official: {error}") from None


if __name__ == "__main__":
    entrypoint()

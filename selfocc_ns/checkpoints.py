"""Checkpoints that are never lost: atomic saves, and loads that skip a corrupt newest checkpoint.

- `save_atomic`: the state is written to a temporary file beside the checkpoint folder (same file system),
  flushed to disk, then renamed over `step-XXXXXXXXX.ckpt`. A run killed while saving leaves the previous
  checkpoints untouched and at most a `.partial` file (removed by the next save), never a truncated `.ckpt`.
  The temporary file lives in the run folder, not in `nerfstudio_models/`, because nerfstudio's loaders
  parse every name in that folder as a step number.
- `load_newest_valid`: newest first, every `step-*.ckpt` is tried; one that cannot be read (0 bytes,
  truncated, not a checkpoint) is reported with a warning naming it and the next older one is used. With an
  explicit step, or when none is readable, it fails naming the files.
- `install_eval_fallback`: `ns-eval`, `ns-viewer` and `ns-render` load through nerfstudio's
  `eval_utils.eval_setup`, which calls the module-level `eval_load_checkpoint` after building the pipeline;
  that function is replaced by one that, for SelfOcc pipelines only, loads with `load_newest_valid`
  (other methods get nerfstudio's own function, unchanged). The SelfOcc pipeline installs it when it is
  built, which `eval_setup` does before it loads the checkpoint.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from nerfstudio.utils.rich_utils import CONSOLE

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)\.ckpt$")
"""nerfstudio's checkpoint file name."""


def console_warning(message: str) -> None:
    """A warning on the console, unwrapped (paths stay whole, so they can be copied and grepped)."""
    CONSOLE.print(f"[bold yellow]selfocc warning:[/bold yellow] {message}", soft_wrap=True, highlight=False)


class CheckpointError(RuntimeError):
    """No usable checkpoint (every candidate named in the message)."""


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    return Path(checkpoint_dir) / f"step-{step:09d}.ckpt"


def partial_path(checkpoint_dir: Path, step: int) -> Path:
    """Where a save of `step` is written before its rename (the run folder, beside `nerfstudio_models/`)."""
    checkpoint_dir = Path(checkpoint_dir)
    return checkpoint_dir.parent / f".{checkpoint_dir.name}.step-{step:09d}.ckpt.partial"


def list_checkpoints(checkpoint_dir: Path) -> List[Tuple[int, Path]]:
    """(step, path) of every `step-*.ckpt` in the folder, newest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def save_atomic(state: Dict[str, Any], checkpoint_dir: Path, step: int) -> Path:
    """Write `state` as `step-XXXXXXXXX.ckpt` so that the file either is complete or does not exist."""
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for stale in checkpoint_dir.parent.glob(f".{checkpoint_dir.name}.step-*.ckpt.partial"):
        stale.unlink(missing_ok=True)  # left by a run killed while saving
    final, tmp = checkpoint_path(checkpoint_dir, step), partial_path(checkpoint_dir, step)
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)  # atomic on POSIX (same file system)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """`torch.load` on the CPU, with one error naming the file when it is not a readable checkpoint."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu")
    except Exception as err:  # EOFError (0 bytes), RuntimeError (truncated zip), UnpicklingError, ...
        raise CheckpointError(f"checkpoint {path} is unreadable ({path.stat().st_size} bytes): "
                              f"{type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or "pipeline" not in state or "step" not in state:
        raise CheckpointError(f"checkpoint {path} is not a nerfstudio checkpoint (no 'pipeline'/'step')")
    return state


def load_newest_valid(
    checkpoint_dir: Path, step: Optional[int] = None, warn: Callable[[str], None] = console_warning
) -> Tuple[Path, Dict[str, Any]]:
    """(path, state) of checkpoint `step`, or of the newest readable one; corrupt newer ones are warned about."""
    checkpoint_dir = Path(checkpoint_dir)
    if step is not None:
        path = checkpoint_path(checkpoint_dir, step)
        if not path.is_file():
            names = ", ".join(p.name for _, p in list_checkpoints(checkpoint_dir)) or "none"
            raise CheckpointError(f"no checkpoint of step {step}: {path} (found: {names})")
        return path, read_checkpoint(path)
    candidates = list_checkpoints(checkpoint_dir)
    if not candidates:
        raise CheckpointError(f"no checkpoint (step-*.ckpt) in {checkpoint_dir}")
    failures = []
    for _, path in candidates:
        try:
            state = read_checkpoint(path)
        except CheckpointError as err:
            failures.append(str(err))
            warn(f"skipping {err}")
            continue
        if failures:
            warn(f"selfocc: using the newest valid checkpoint instead: {path}")
        return path, state
    raise CheckpointError(f"no valid checkpoint in {checkpoint_dir}:\n  " + "\n  ".join(failures))


def _selfocc_eval_load_checkpoint(config, pipeline) -> Tuple[Path, int]:
    """nerfstudio's `eval_load_checkpoint` with the fall-back of `load_newest_valid` (SelfOcc pipelines)."""
    if not type(pipeline).__module__.startswith("selfocc_ns"):
        return _NERFSTUDIO_EVAL_LOAD[0](config, pipeline)
    path, state = load_newest_valid(config.load_dir, config.load_step)
    pipeline.load_pipeline(state["pipeline"], state["step"])
    CONSOLE.print(f":white_check_mark: Done loading checkpoint from {path}", soft_wrap=True)
    return path, int(state["step"])


_NERFSTUDIO_EVAL_LOAD: List[Callable] = []


def install_eval_fallback() -> None:
    """Route nerfstudio's `eval_setup` (ns-eval, ns-viewer, ns-render) through `load_newest_valid` (idempotent).

    Only when `eval_utils` is already imported (it is, by whoever calls `eval_setup`): importing it here
    would import nerfstudio's method registry, i.e. this plugin, from inside its own import.
    """
    import sys

    eval_utils = sys.modules.get("nerfstudio.utils.eval_utils")
    if eval_utils is None:
        return

    if eval_utils.eval_load_checkpoint is not _selfocc_eval_load_checkpoint:
        _NERFSTUDIO_EVAL_LOAD[:] = [eval_utils.eval_load_checkpoint]
        eval_utils.eval_load_checkpoint = _selfocc_eval_load_checkpoint

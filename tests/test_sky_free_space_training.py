"""The sky free-space flags lower occupancy false positives: the same short selfocc-tiny run on the session world,
once as the preset has it and once with those flags off, scored on the val scene (official protocol).

Early in training the field calls most of what the val cameras see occupied (precision ~8 %): nothing in the
official losses asks the space a ray looks through to be free, and sky rays are asked to be opaque inside the box
by the RGB loss's random background and by the semantic loss. The sky flags ask sky rays to leave the box empty.
Both runs start from the same weights and see the same batches; only the losses differ.
"""

from __future__ import annotations

import pytest
import torch

from selfocc_ns.configs import tiny
from selfocc_ns.eval.options import EvalOptions
from selfocc_ns.eval.runner import Evaluator
from selfocc_ns.metrics.occupancy import geometric_counts
from test_model_training import tiny_trainer

STEPS = 8

SKY_FLAGS_OFF = {
    "pipeline.model.sky_free_loss_weight": 0.0,
    "pipeline.model.sky_free_rgb": False,
}
SMALL = {
    "pipeline.model.renderer.num_samples": 32,
    "pipeline.model.renderer.train_lattice_hw": (12, 24),
}


def occupancy_counts(small_world, tmp_path, **overrides):
    """(TP, FP, FN) on the val scene after STEPS training steps."""
    trainer = tiny_trainer(small_world, tmp_path, **SMALL, **overrides)
    for step in range(STEPS):
        trainer.train_iteration(step)
    pipeline = trainer.pipeline
    pipeline.eval()
    evaluator = Evaluator(pipeline.model, EvalOptions(tasks=("occupancy",), baseline=False),
                          pipeline.datamanager.eval_index.cameras)
    with torch.no_grad():
        for batch in pipeline.datamanager.iter_eval_batches():
            evaluator.add(batch)
    return tuple(int(v) for v in geometric_counts(evaluator.occ.hist, "selfocc"))


@pytest.mark.slow  # two 8-step trainings and two val-scene evaluations: ~2.5 min on 2 shared cores
def test_sky_free_space_flags_lower_false_positives_on_the_val_scene(small_world, tmp_path):
    model = tiny.trainer_config().pipeline.model
    assert model.sky_free_loss_weight > 0 and model.sky_free_rgb, "selfocc-tiny has them on"
    with_free = occupancy_counts(small_world, tmp_path / "on")
    without = occupancy_counts(small_world, tmp_path / "off", **SKY_FLAGS_OFF)
    print(f"TP/FP/FN with the sky free-space flags {with_free}, without {without}")
    # measured: FP 293612 with, 363227 without (-19 %) after 8 steps still inside the preset's 20-step warm-up
    assert with_free[1] < 0.9 * without[1]
    # fewer false positives are not bought by predicting nothing: precision rises and something stays occupied
    precision = [tp / max(1, tp + fp) for tp, fp, _ in (with_free, without)]
    assert precision[0] > precision[1]
    assert with_free[0] > 0

"""The free-space loss lowers occupancy false positives: the same short selfocc-tiny run on the session world, once
with the seen-through free-space loss on from step 0 and once as the preset has it (off), scored on the val scene
(official protocol).

Early in training the field calls most of what the val cameras see occupied (precision ~8 %): nothing in the
official losses asks the space a ray looks through to be free, and sky rays are asked to be opaque inside the box
by the RGB loss's random background and by the semantic loss. The free-space loss asks the samples a ray sees
through to be free. (The sky flags alone change almost nothing in these 8 steps: FP 362891 vs 363226.)
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

FREE_SPACE_ON = {
    "pipeline.model.free_space_loss_weight": 1.0,
    "pipeline.model.free_space_start_step": 0,
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
def test_free_space_loss_lowers_false_positives_on_the_val_scene(small_world, tmp_path):
    assert tiny.trainer_config().pipeline.model.free_space_loss_weight == 0, "selfocc-tiny has it off"
    with_free = occupancy_counts(small_world, tmp_path / "on", **FREE_SPACE_ON)
    without = occupancy_counts(small_world, tmp_path / "off")
    print(f"TP/FP/FN with the free-space loss {with_free}, without {without}")
    # measured: FP 300454 with, 363226 without (-17 %) after 8 steps, still inside the preset's 20-step warm-up
    assert with_free[1] < 0.9 * without[1]
    # fewer false positives are not bought by predicting nothing: precision rises and something stays occupied
    precision = [tp / max(1, tp + fp) for tp, fp, _ in (with_free, without)]
    assert precision[0] > precision[1]
    assert with_free[0] > 0

"""Two CPU processes (gloo) run the project's own trainer/pipeline: data sharded by global rank, DDP keeps
the replicas identical, eval metrics are all-reduced. (nerfstudio's launcher only spawns on CUDA, so the test
starts the two processes itself, as nerfstudio's launcher only spawns on CUDA.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port

WORLD_SIZE = 2


def _worker(rank: int, port: int, world: str, out_dir: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        from test_model_training import tiny_trainer

        trainer = tiny_trainer(
            Path(world), Path(out_dir) / f"rank{rank}", world_size=WORLD_SIZE, local_rank=rank,
            **{"pipeline.model.renderer.train_lattice_hw": (12, 24), "pipeline.model.renderer.num_samples": 32},
        )
        pipeline = trainer.pipeline
        assert isinstance(pipeline._model, torch.nn.parallel.DistributedDataParallel)
        tokens = []
        for step in range(2):
            batch, _ = pipeline.datamanager.next_train(step)
            tokens.extend(batch.sample_tokens)
            trainer.train_iteration(step)
        params = torch.cat([p.detach().flatten() for p in pipeline.model.parameters()])
        evaluation = pipeline.evaluate(pipeline.eval_options(tasks=("depth",), lattice_fraction=0.25), baseline_depth_m=10.0)
        results[rank] = {
            "tokens": tokens,
            "param_sum": float(params.double().sum()),
            "param_abs": float(params.double().abs().sum()),
            "eval": {k: v for k, v in evaluation.items() if k.startswith("depth/raw/") or k == "eval/num_samples"},
        }
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_shard_data_sync_weights_and_reduce_metrics(small_world, tmp_path):
    from test_model_training import tiny_trainer  # noqa: F401  (importable in the workers too)

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(free_port(), str(small_world), str(tmp_path), results), nprocs=WORLD_SIZE, join=True)
    r0, r1 = results[0], results[1]
    # the two ranks trained on different keyframes (4 keyframes, 2 per rank per epoch)
    assert not set(r0["tokens"]) & set(r1["tokens"]), (r0["tokens"], r1["tokens"])
    # DDP averaged the gradients: both replicas hold the same weights
    assert r0["param_sum"] == pytest.approx(r1["param_sum"], rel=1e-9, abs=1e-6)
    assert r0["param_abs"] == pytest.approx(r1["param_abs"], rel=1e-9)
    # each rank evaluated its shard, the metrics were all-reduced: identical dicts counting every eval keyframe
    assert r0["eval"] == r1["eval"]
    assert r0["eval"]["eval/num_samples"] == 4.0

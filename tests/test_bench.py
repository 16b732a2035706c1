"""`selfocc-bench` smoke test: it runs on the session checkpoint and on a preset's geometry and writes its keys
(no timing assertions: a benchmark, not a timed test)."""

from __future__ import annotations

import json

import pytest
import torch

from selfocc_ns.scripts.bench import SelfOccBench, street_distance_m, street_sdf


def test_bench_runs_and_writes_the_report(tiny_run, tiny_pipeline, tmp_path):
    out = tmp_path / "bench.json"
    bench = SelfOccBench(load_config=tiny_run, output_path=out, samples=1, training_steps=1,
                         memory_fractions=(0.25, 0.5), geometry=("selfocc",), geometry_inv_s=(100.0,),
                         geometry_stride=1, geometry_lattice_hw=(9, 16))
    before = {key: value.clone() for key, value in tiny_pipeline.state_dict().items()}
    report = bench.main(pipeline=tiny_pipeline)
    after = tiny_pipeline.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # the shared checkpoint is left as it was
    written = json.loads(out.read_text())
    assert set(written) == set(report)
    for key in ("render/speedup", "render/max_rel_metric_diff", "faithful/depth/seconds_per_sample",
                "fast/depth/seconds_per_sample", "fast/depth/samples_per_ray", "faithful/depth/raw/abs_rel",
                "fast/depth/raw/a1", "fast/occupancy/seconds_per_sample", "export/seconds_per_sample",
                "memory/fast/lattice_0.5/peak_mb", "train/backward/seconds", "train/step/seconds",
                "geometry/selfocc/inv_s_100/speedup", "geometry/selfocc/inv_s_100/max_rel_metric_diff"):
        assert key in written, key
    assert written["render/max_rel_metric_diff"] < 1e-3  # fast and faithful agree (a real bound in test_evaluation)
    assert written["faithful/depth/samples_per_ray"] == tiny_pipeline.model.renderer.config.num_samples
    assert not tiny_pipeline.training and tiny_pipeline.model.renderer.config.fast_eval


def test_bench_refuses_a_missing_config_and_an_empty_run(tmp_path):
    with pytest.raises(SystemExit, match="no config at"):
        SelfOccBench(load_config=tmp_path / "nope.yml").main()
    with pytest.raises(SystemExit, match="nothing to measure"):
        SelfOccBench().main()


def test_street_ray_cast_agrees_with_its_sdf():
    """The street's exact ray cast lands on its SDF's zero set (ground and box faces)."""
    origins = torch.tensor([[0.0, 0.0, 1.6]]).expand(5, 3)
    directions = torch.nn.functional.normalize(torch.tensor(
        [[1.0, 0.0, -0.1], [1.0, 0.4, -0.01], [0.0, -1.0, -0.05], [-1.0, 0.0, -0.3], [1.0, 0.1, -0.02]]), dim=-1)
    distance = street_distance_m(origins, directions)
    hits = origins + directions * distance[:, None]
    assert torch.isfinite(distance).all() and float(distance[1]) < 10.0  # the box at (10, 4) first
    torch.testing.assert_close(street_sdf(hits), torch.zeros(5), atol=1e-4, rtol=0)

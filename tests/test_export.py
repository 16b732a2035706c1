"""`selfocc-export` on the session's tiny checkpoint: layout, round trip, PLY/BEV/mesh contents, and the
exported grids re-evaluated as predictions give exactly the in-memory evaluation's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_command, training_dir
from PIL import Image
from plyfile import PlyData

from selfocc_ns.data.occ3d import FREE_ID, OCC3D_PALETTE, OCC3D_SHAPE, load_labels, voxel_centres_m
from selfocc_ns.eval.export_io import bev_image
from selfocc_ns.metrics import OccupancyMetricAccumulator
from selfocc_ns.scripts.export import MANIFEST_NAME, SelfOccExport, select_indices




@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    """`selfocc-export --samples 2 --mesh` of the val split (official protocol), run as a user would."""
    out = tmp_path_factory.mktemp("export") / "val"
    result = run_command(["selfocc-export", "--load-config", str(tiny_run), "--output-dir", str(out), "--samples", "2",
                          "--mesh"], cwd=training_dir(tiny_run))
    assert "exported 2 keyframes (mini_val, protocol selfocc" in result.stdout
    assert "selfocc export" in result.stderr and "2/2" in result.stderr  # the progress bar
    return out


def test_layout_and_manifest(exported, tiny_pipeline):
    index = tiny_pipeline.datamanager.eval_index
    manifest = json.loads((exported / MANIFEST_NAME.format(split="val")).read_text())
    assert manifest["protocol"] == "selfocc" and manifest["split"] == "mini_val" and manifest["num_samples"] == 2
    expected = [index.sample_frame(i) for i in (0, 2)]  # 2 of 4, evenly spaced
    assert [(s["scene"], s["sample_token"]) for s in manifest["samples"]] == [
        (f.scene_name, f.sample_token) for f in expected]
    for frame in expected:
        folder = exported / frame.scene_name / frame.sample_token
        assert sorted(p.name for p in folder.iterdir()) == ["bev.png", "labels.npz", "mesh.ply", "occupancy.ply"]
    assert all(s["has_gt"] and 0 <= s["iou"] <= 1 for s in manifest["samples"])


def test_npz_round_trip_ply_bev_and_mesh(exported, tiny_pipeline):
    index = tiny_pipeline.datamanager.eval_index
    centres = np.stack(np.meshgrid(*voxel_centres_m(), indexing="ij"), -1)
    for i in (0, 2):
        frame = index.sample_frame(i)
        folder = exported / frame.scene_name / frame.sample_token
        labels, gt = load_labels(folder / "labels.npz"), load_labels(frame.occ_path)
        sem = labels["semantics"]
        assert sem.dtype == np.uint8 and sem.shape == OCC3D_SHAPE and sem.max() <= FREE_ID
        assert np.array_equal(labels["mask_camera"], gt["mask_camera"])
        assert np.array_equal(labels["mask_lidar"], gt["mask_lidar"])
        occupied = sem != FREE_ID
        assert 0 < occupied.sum() < sem.size
        assert not occupied[..., 12:].any() and not occupied[:6].any()  # the official crops

        vertex = PlyData.read(str(folder / "occupancy.ply"))["vertex"].data
        assert len(vertex) == occupied.sum()
        xyz = np.stack([vertex[a] for a in "xyz"], 1)
        np.testing.assert_allclose(np.sort(xyz, axis=0), np.sort(centres[occupied], axis=0), atol=1e-4)
        rgb = np.stack([vertex[c] for c in ("red", "green", "blue")], 1)
        assert np.array_equal(rgb, OCC3D_PALETTE[vertex["label"]])
        assert np.bincount(vertex["label"], minlength=18).tolist() == np.bincount(sem[occupied], minlength=18).tolist()

        bev = np.asarray(Image.open(folder / "bev.png").convert("RGB"))
        assert np.array_equal(bev, bev_image(sem, pixels_per_voxel=2)) and bev.shape == (400, 400, 3)
        mesh = PlyData.read(str(folder / "mesh.ply"))
        assert len(mesh["vertex"].data) > 0 and len(mesh["face"].data) > 0
        mesh_xyz = np.stack([mesh["vertex"].data[a] for a in "xyz"], 1)
        assert (mesh_xyz.min(0) >= np.array([-40, -40, -1]) - 1e-3).all()
        assert (mesh_xyz.max(0) <= np.array([40, 40, 5.4]) + 1e-3).all()


def test_exported_grids_reevaluate_to_the_in_memory_numbers(exported, tiny_pipeline):
    """Exported labels.npz scored against the gts == Evaluator on the same keyframes (same protocol)."""
    index = tiny_pipeline.datamanager.eval_index
    in_memory = tiny_pipeline.evaluate(tiny_pipeline.eval_options(tasks=("occupancy",)), indices=[0, 2])
    again = OccupancyMetricAccumulator("selfocc")
    for i in (0, 2):
        frame = index.sample_frame(i)
        pred = load_labels(exported / frame.scene_name / frame.sample_token / "labels.npz")["semantics"]
        gt = load_labels(frame.occ_path)
        again.add(torch.from_numpy(pred), torch.from_numpy(gt["semantics"]), torch.from_numpy(gt["mask_camera"]))
    scores = again.compute()
    assert in_memory["occ/num_samples"] == 2
    for key in ("occ/iou", "occ/miou", "occ/miou_sum17", "occ/precision", "occ/recall", "occ/num_voxels_scored"):
        assert scores[key] == in_memory[key], key
    manifest = json.loads((exported / MANIFEST_NAME.format(split="val")).read_text())
    assert manifest["results"]["occ/iou"] == in_memory["occ/iou"]


def test_export_fed_back_as_gts_scores_itself_perfectly(tiny_run, tiny_pipeline, tmp_path):
    """The clean-protocol export of every keyframe (both splits: the dataparser wants a gt for each), given
    back as --gts-dir, is a perfect prediction of itself: the layout is the Occ3D gts layout."""
    from selfocc_ns.eval.options import EvalOptions
    from selfocc_ns.scripts.eval import SelfOccEval

    out = tmp_path / "occ3d"
    train = SelfOccExport(tiny_run, out, split="train", protocol="occ3d").main()
    assert train["split"] == "mini_train" and train["num_samples"] == 4
    manifest = SelfOccExport(tiny_run, out, protocol="occ3d").main()
    assert sorted(p.name for p in out.glob("*.json")) == ["export_train.json", "export_val.json"]
    assert manifest["num_samples"] == 4 and manifest["protocol"] == "occ3d"
    options = EvalOptions(tasks=("occupancy",), occupancy_protocol="occ3d", baseline=False)
    report = SelfOccEval(tiny_run, evaluation=options, gts_dir=out, all_samples=True).main()
    results = report["results"]
    assert results["occ/protocol"] == "occ3d" and results["occ/num_samples"] == 4
    assert not any("baseline" in key for key in results) and report["baselines"] == {}
    assert results["occ/iou"] == 1.0 and results["occ/miou"] == 1.0
    # and against the real gts, the export's own numbers are the clean-protocol evaluation's
    real = tiny_pipeline.evaluate(tiny_pipeline.eval_options(tasks=("occupancy",), occupancy_protocol="occ3d"),
                                  indices=[0, 1, 2, 3])
    assert manifest["results"]["occ/iou"] == real["occ/iou"]


def test_select_indices(tiny_pipeline):
    index = tiny_pipeline.datamanager.eval_index
    tokens = [index.sample_frame(i).sample_token for i in range(4)]
    assert select_indices(index, ()) == [0, 1, 2, 3]
    assert select_indices(index, ("2",)) == [0, 2] and select_indices(index, ("9",)) == [0, 1, 2, 3]
    assert select_indices(index, (tokens[3], tokens[1])) == [1, 3]
    assert select_indices(index, ("scene-0103",)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="neither sample tokens nor scene names"):
        select_indices(index, ("scene-9999",))

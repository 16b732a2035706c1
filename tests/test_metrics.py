"""Metrics on hand-made inputs with closed-form answers (depth, novel depth, occupancy, all-reduce, table)."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch

from selfocc_ns.data.occ3d import CLASS_ID, FREE_ID, OCC3D_SHAPE
from selfocc_ns.metrics import (
    DepthHistogramMedian,
    DepthMetricAccumulator,
    NovelDepthAccumulator,
    OccupancyMetricAccumulator,
    apply_official_crops,
    clean_occupancy_prediction,
    clean_query_points,
    confusion_matrix,
    depth_errors,
    distance_bin,
    flat_ground_prediction,
    format_table,
    lattice_read_mask,
    merge_results,
    official_occupancy_prediction,
    official_query_points,
    project_lidar,
    sample_depth_at_points,
    semantic_ids,
)

CAR, ROAD, OTHERS = CLASS_ID["car"], CLASS_ID["driveable_surface"], CLASS_ID["others"]


# ---------------------------------------------------------------- depth


def test_depth_errors_of_doubled_prediction():
    gt = torch.tensor([2.0, 4.0, 8.0])
    raw = depth_errors(2 * gt, gt)
    assert raw["abs_rel"] == pytest.approx(1.0)
    assert raw["sq_rel"] == pytest.approx(14.0 / 3.0)  # (2g - g)^2 / g = g
    assert raw["rmse"] == pytest.approx(math.sqrt(28.0))  # sqrt(mean(g^2))
    assert raw["rmse_log"] == pytest.approx(math.log(2.0))
    assert (raw["a1"], raw["a2"], raw["a3"]) == (0.0, 0.0, 0.0)  # ratio 2 > 1.25^3 = 1.953
    scaled = depth_errors(2 * gt, gt, median_scale=True)
    assert scaled["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert scaled["a1"] == 1.0


def test_depth_errors_thresholds_clamp_and_lower_median():
    gt = torch.tensor([10.0, 10.0, 10.0, 10.0])
    pred = torch.tensor([12.0, 14.0, 18.0, 10.0])  # ratios 1.2, 1.4, 1.8, 1.0
    e = depth_errors(pred, gt)
    assert (e["a1"], e["a2"], e["a3"]) == (0.5, 0.75, 1.0)
    # clamp to [1e-3, 80]: 100 -> 80 and 0 -> 1e-3
    assert depth_errors(torch.tensor([100.0]), torch.tensor([40.0]))["abs_rel"] == pytest.approx(1.0)
    assert depth_errors(torch.tensor([0.0]), torch.tensor([2.0]))["abs_rel"] == pytest.approx(1.0 - 1e-3 / 2.0)
    # torch.median takes the lower middle value: median(gt)=2, median(pred)=1 -> scale 2 -> pred 2 everywhere
    gt4 = torch.tensor([1.0, 2.0, 3.0, 4.0])
    e = depth_errors(torch.ones(4), gt4, median_scale=True)
    assert e["abs_rel"] == pytest.approx((1.0 + 0.0 + 1.0 / 3.0 + 2.0 / 4.0) / 4.0)


def test_sample_depth_at_points_is_exact_on_a_linear_lattice():
    h_l, w_l, height, width = 4, 5, 8, 10
    rows, cols = torch.meshgrid(
        torch.arange(h_l, dtype=torch.float64), torch.arange(w_l, dtype=torch.float64), indexing="ij"
    )
    depth = 3.0 + 0.5 * rows + 0.25 * cols
    # lattice sample (r, c) sits at ((c + 0.5) * W / w_l, (r + 0.5) * H / h_l)
    centres = torch.tensor(
        [[(2 + 0.5) * 2.0, (1 + 0.5) * 2.0], [(4 + 0.5) * 2.0, (3 + 0.5) * 2.0]], dtype=torch.float64
    )
    assert torch.allclose(
        sample_depth_at_points(depth, centres, (height, width)),
        torch.tensor([3.0 + 0.5 + 0.5, 3.0 + 1.5 + 1.0], dtype=torch.float64),
    )
    # any interior point: lattice coordinate x = u * w_l / W - 0.5, exact for a linear map
    uv = torch.tensor([[3.3, 2.7], [7.9, 5.1]], dtype=torch.float64)
    x, y = uv[:, 0] * w_l / width - 0.5, uv[:, 1] * h_l / height - 0.5
    assert torch.allclose(sample_depth_at_points(depth, uv, (height, width)), 3.0 + 0.5 * y + 0.25 * x)
    # beyond the outermost samples: border value
    corner = sample_depth_at_points(
        depth, torch.tensor([[0.0, 0.0], [10.0, 8.0]], dtype=torch.float64), (height, width)
    )
    assert torch.allclose(corner, torch.tensor([depth[0, 0], depth[-1, -1]]))


def test_sample_depth_at_points_gradient_weights():
    depth = torch.zeros(4, 5, requires_grad=True)
    uv = torch.tensor([[3.3, 2.7]])  # lattice x = 3.3 * 0.5 - 0.5 = 1.15, y = 2.7 * 0.5 - 0.5 = 0.85
    sample_depth_at_points(depth, uv, (8, 10)).sum().backward()
    grad = depth.grad
    assert grad.sum().item() == pytest.approx(1.0)
    assert grad[0, 1].item() == pytest.approx(0.85 * 0.15)  # (1 - fx) * (1 - fy)
    assert grad[1, 2].item() == pytest.approx(0.15 * 0.85)  # fx * fy
    assert int((grad != 0).sum()) == 4


@pytest.mark.parametrize("lattice", ["pixel_centre", "official"])
def test_lattice_read_mask_holds_every_value_the_read_uses(lattice):
    """A map that is NaN outside `lattice_read_mask` reads exactly as the whole map (points on lattice lines,
    the border and beyond it included); the mask is no larger than four corners per point."""
    generator = torch.Generator().manual_seed(0)
    image_hw, lattice_hw = (90, 160), (45, 80)
    depth = torch.rand(lattice_hw, generator=generator) * 50 + 1
    uv = torch.rand(300, 2, generator=generator) * torch.tensor([160.0, 90.0])
    uv = torch.cat([uv, torch.tensor([[0.0, 0.0], [159.99, 89.99], [3.0, 4.0], [2.0, 2.0]])])
    mask = lattice_read_mask(uv, lattice_hw, image_hw, lattice)
    holed = torch.where(mask, depth, torch.full_like(depth, math.nan))
    torch.testing.assert_close(sample_depth_at_points(holed, uv, image_hw, lattice),
                               sample_depth_at_points(depth, uv, image_hw, lattice), rtol=0, atol=0)
    assert 0 < int(mask.sum()) <= 4 * uv.shape[0]


def test_official_lattice_read_stretches_the_lattice_to_the_image_edges():
    """The official read: lattice index (u / W (w_l - 1), v / H (h_l - 1)) with border padding. On the linear map
    d(r, c) = 3 + 0.5 r + 0.25 c over a 4 x 5 lattice of a 8 x 10 image: u = W reads the last column (c = 4), u = W / 2
    reads c = 2 (not the pixel-centre index 2 - 0.5), the origin reads (0, 0)."""
    rows, cols = torch.meshgrid(torch.arange(4, dtype=torch.float64), torch.arange(5, dtype=torch.float64),
                                indexing="ij")
    depth = 3.0 + 0.5 * rows + 0.25 * cols
    uv = torch.tensor([[10.0, 8.0], [5.0, 4.0], [0.0, 0.0], [3.3, 2.7]], dtype=torch.float64)
    got = sample_depth_at_points(depth, uv, (8, 10), lattice="official")
    x, y = 3.3 / 10 * 4, 2.7 / 8 * 3
    expected = torch.tensor([3 + 1.5 + 1.0, 3 + 0.75 + 0.5, 3.0, 3 + 0.5 * y + 0.25 * x], dtype=torch.float64)
    torch.testing.assert_close(got, expected)
    pixel_centre = sample_depth_at_points(depth, uv[1:2], (8, 10))
    assert float(pixel_centre) == pytest.approx(3 + 0.5 * 1.5 + 0.25 * 2.0)
    with pytest.raises(ValueError, match="lattice must be"):
        sample_depth_at_points(depth, uv, (8, 10), lattice="centre")


def _front_camera():
    cam2ego = torch.eye(4, dtype=torch.float64)
    # OpenCV axes in the ego frame: x right = -y_ego, y down = -z_ego, z forward = x_ego
    cam2ego[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
    cam2ego[:3, 3] = torch.tensor([1.5, 0.0, 1.6], dtype=torch.float64)
    intrinsics = torch.tensor([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return cam2ego, intrinsics


def test_project_lidar_known_points():
    cam2ego, intrinsics = _front_camera()
    points = torch.tensor(
        [
            [11.5, 0.0, 1.6],  # straight ahead, 10 m -> principal point
            [6.5, -1.0, 1.6],  # 5 m ahead, 1 m right -> u = 50 + 100 * 1 / 5
            [11.5, 0.0, 0.6],  # 10 m ahead, 1 m down -> v = 40 + 10
            [-5.0, 0.0, 1.6],  # behind
            [2.0, 0.0, 1.6],  # 0.5 m: closer than 1 m
            [86.5, 0.0, 1.6],  # 85 m: beyond 80 m
            [11.5, -10.0, 1.6],  # u = 150: right of the image
            [11.5, 5.0, 1.6],  # u = 0: first column, kept
            [11.5, -5.0, 1.6],  # u = 100 = W: outside
        ]
    )
    uv, depth = project_lidar(points, cam2ego, intrinsics, (80, 100))
    assert torch.allclose(uv, torch.tensor([[50.0, 40.0], [70.0, 40.0], [50.0, 50.0], [0.0, 40.0]]), atol=1e-5)
    assert torch.allclose(depth, torch.tensor([10.0, 5.0, 10.0, 10.0]))
    assert uv.dtype == torch.float32
    # the official bounds are strict: the point on u = 0 is dropped
    strict_uv, _ = project_lidar(points, cam2ego, intrinsics, (80, 100), strict_bounds=True)
    assert torch.allclose(strict_uv, uv[:3], atol=1e-5)


def test_depth_accumulator_means_std_cameras_and_baseline():
    acc = DepthMetricAccumulator(camera_names=("CAM_FRONT", "CAM_BACK"), baseline_depth_m=4.0)
    gt = torch.tensor([2.0, 4.0, 8.0])
    per_image = acc.add(2 * gt, gt, "CAM_FRONT")  # raw abs_rel 1, median 0
    assert per_image["abs_rel"] == pytest.approx(1.0)
    acc.add(gt.clone(), gt, "CAM_BACK")  # perfect: 0 and 0
    acc.add(torch.ones(0), torch.ones(0), 1)  # no projected point: counted, not averaged
    out = acc.compute()
    assert out["depth/raw/abs_rel"] == pytest.approx(0.5)
    assert out["depth/raw/abs_rel_std"] == pytest.approx(math.sqrt(0.5))  # unbiased, as nerfstudio's std_mean
    assert out["depth/median/abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert out["depth/raw/CAM_FRONT/abs_rel"] == pytest.approx(1.0)
    assert out["depth/raw/CAM_BACK/abs_rel"] == pytest.approx(0.0)
    assert out["depth/median/scale"] == pytest.approx((0.5 + 1.0) / 2)
    # constant 4 m: |g - 4| / g = 1, 0, 0.5 on both images
    assert out["depth/baseline/raw/abs_rel"] == pytest.approx(0.5)
    assert out["depth/baseline/depth_m"] == 4.0
    assert (out["depth/num_images"], out["depth/num_points"], out["depth/num_images_without_points"]) == (2.0, 6.0, 1.0)
    assert out == acc.compute()  # compute() leaves the state alone
    with pytest.raises(ValueError, match="unknown camera"):
        acc.add(gt, gt, "CAM_LEFT")


def test_novel_depth_binning():
    assert [distance_bin(d) for d in (0.5, 1.0, 1.2, 2.7, 3.0)] == [1, 1, 2, 3, 3]
    acc = NovelDepthAccumulator(camera_names=("CAM_FRONT",), max_bin=10)
    gt = torch.tensor([5.0, 10.0])
    acc.add(gt * 1.5, gt, 0.5, "CAM_FRONT")  # abs_rel 0.5, bin 1
    acc.add(gt * 1.1, gt, 1.0, "CAM_FRONT")  # abs_rel 0.1, bin 1
    acc.add(gt * 2.0, gt, 2.7, "CAM_FRONT")  # abs_rel 1.0, bin 3
    out = acc.compute()
    assert out["novel_depth/bin_1m/abs_rel"] == pytest.approx(0.3)
    assert out["novel_depth/bin_1m/num_images"] == 2.0
    assert out["novel_depth/bin_3m/abs_rel"] == pytest.approx(1.0)
    assert "novel_depth/bin_2m/abs_rel" not in out
    assert out["novel_depth/abs_rel"] == pytest.approx(1.6 / 3)
    assert out["novel_depth/CAM_FRONT/a1"] == pytest.approx(1.0 / 3)  # only the 1.1x image is within 1.25
    with pytest.raises(ValueError, match="beyond the last bin"):
        acc.add(gt, gt, 10.5, "CAM_FRONT")


def test_histogram_median():
    med = DepthHistogramMedian()
    med.add(torch.tensor([1.0, 2.0, 30.0]))
    med.add(torch.tensor([50.0, 79.99]))
    assert med.median_m() == pytest.approx(30.0, abs=0.01)


# ---------------------------------------------------------------- occupancy


def test_query_points():
    official, clean = official_query_points(), clean_query_points()
    assert official.shape == clean.shape == (*OCC3D_SHAPE, 3)
    assert torch.allclose(official[0, 0, 0], torch.tensor([-40.0, -40.0, -1.0]))
    assert torch.allclose(official[-1, -1, -1], torch.tensor([40.0, 40.0, 5.4]))
    assert official[1, 0, 0, 0] - official[0, 0, 0, 0] == pytest.approx(80.0 / 199.0, abs=1e-5)
    assert official[0, 0, 1, 2] - official[0, 0, 0, 2] == pytest.approx(6.4 / 15.0, abs=1e-5)
    assert torch.allclose(clean[0, 0, 0], torch.tensor([-39.8, -39.8, -0.8]))
    assert torch.allclose(clean[-1, -1, -1], torch.tensor([39.8, 39.8, 5.2]))


def test_official_crops_and_semantics():
    sdf = -torch.ones(OCC3D_SHAPE)
    logits = torch.zeros(*OCC3D_SHAPE, 18)
    logits[..., 0] = 9.0  # 'others' and sky are never chosen
    logits[..., 17] = 9.0
    logits[..., CAR] = 1.0
    pred = official_occupancy_prediction(sdf, logits)
    occupied = pred != FREE_ID
    assert int(occupied.sum()) == 188 * 188 * 12
    assert pred.dtype == torch.uint8 and int(pred[100, 100, 0]) == CAR
    assert not occupied[5, 100, 3] and occupied[6, 100, 3] and not occupied[194, 100, 3] and occupied[193, 100, 3]
    assert not occupied[100, 5, 3] and occupied[100, 6, 3] and not occupied[100, 194, 3] and occupied[100, 193, 3]
    assert occupied[100, 100, 11] and not occupied[100, 100, 12]
    # threshold is inclusive (sdf <= 0), positive is free; clean variant has no crops
    assert int((official_occupancy_prediction(torch.zeros(OCC3D_SHAPE)) != FREE_ID).sum()) == 188 * 188 * 12
    assert int((official_occupancy_prediction(torch.full(OCC3D_SHAPE, 0.1)) != FREE_ID).sum()) == 0
    assert int((clean_occupancy_prediction(sdf) != FREE_ID).sum()) == 200 * 200 * 16
    assert int(clean_occupancy_prediction(sdf)[0, 0, 0]) == OTHERS  # no semantics: class unknown
    assert torch.equal(apply_official_crops(occupied), occupied)
    ids = torch.full(OCC3D_SHAPE, 7)
    assert torch.equal(semantic_ids(ids), ids.long())


def _block(value: int, x0: int, x1: int, background: int = FREE_ID) -> torch.Tensor:
    grid = torch.full(OCC3D_SHAPE, background, dtype=torch.uint8)
    grid[x0:x1, 50:60, 2:6] = value
    return grid


def test_one_voxel_shift_iou_by_hand():
    gt = _block(CAR, 50, 60)  # 10 x 10 x 4 = 400 voxels
    pred = _block(CAR, 51, 61)  # shifted by one voxel along x
    # intersection 9 x 10 x 4 = 360, union 11 x 10 x 4 = 440
    expected = 360.0 / 440.0
    for protocol in ("selfocc", "occ3d"):
        acc = OccupancyMetricAccumulator(protocol, flat_ground_baseline_z_m=None)
        acc.add(pred, gt, torch.ones(OCC3D_SHAPE, dtype=torch.uint8))
        out = acc.compute()
        assert out["occ/iou"] == pytest.approx(expected)
        assert out["occ/iou/car"] == pytest.approx(expected)
        assert out["occ/miou"] == pytest.approx(expected)  # the only class with GT or prediction
        assert out["occ/num_classes_scored"] == 1.0
        assert out["occ/precision"] == pytest.approx(0.9) and out["occ/recall"] == pytest.approx(0.9)
    assert out["occ/num_voxels_scored"] == 200 * 200 * 16
    assert "occ/miou_sum17" not in out  # the paper's /17 form belongs to the selfocc protocol


def test_two_miou_forms_and_others_class():
    gt = _block(CAR, 50, 60)
    gt[:, :, 0] = ROAD
    pred = _block(CAR, 51, 61)
    pred[:, :, 0] = ROAD
    acc = OccupancyMetricAccumulator("selfocc", flat_ground_baseline_z_m=None)
    acc.add(pred, gt)
    out = acc.compute()
    car = 360.0 / 440.0
    assert out["occ/iou/driveable_surface"] == pytest.approx(1.0)
    assert out["occ/miou"] == pytest.approx((1.0 + car) / 2)
    assert out["occ/miou_sum17"] == pytest.approx((1.0 + car) / 17)
    # GT 'others' is empty under selfocc (a prediction there is a false positive), occupied under occ3d
    gt_others, pred_others = _block(OTHERS, 50, 60), _block(OTHERS, 50, 60)
    for protocol, iou in (("selfocc", 0.0), ("occ3d", 1.0)):  # selfocc: 0 TP, 400 FP
        acc = OccupancyMetricAccumulator(protocol, flat_ground_baseline_z_m=None)
        acc.add(pred_others, gt_others)
        out = acc.compute()
        assert out.get("occ/iou") == iou
        assert out.get("occ/precision") == (0.0 if protocol == "selfocc" else 1.0)
    assert out["occ/iou/others"] == 1.0 and out["occ/miou"] == 1.0


def test_mask_camera_excludes_voxels_and_split_accumulates():
    gt = _block(CAR, 50, 60)
    pred = gt.clone()
    pred[0:10, 0:10, 0:4] = CAR  # 400 false positives, hidden from the cameras
    mask = torch.ones(OCC3D_SHAPE, dtype=torch.bool)
    mask[0:10, 0:10, :] = False
    acc = OccupancyMetricAccumulator("selfocc", flat_ground_baseline_z_m=None)
    acc.add(pred, gt, mask)
    assert acc.compute()["occ/iou"] == 1.0
    acc.add(pred, gt, None)  # unmasked: split totals 800 TP, 400 FP
    assert acc.compute()["occ/iou"] == pytest.approx(800.0 / 1200.0)
    with pytest.raises(ValueError, match="outside 0..17"):
        confusion_matrix(torch.full(OCC3D_SHAPE, 18), gt)


def test_flat_ground_baseline():
    # official z points -1, -0.573, -0.147 are <= 0 -> 3 layers, then the crops
    official = flat_ground_prediction("selfocc")
    assert int((official != FREE_ID).sum()) == 188 * 188 * 3
    assert int(official[100, 100, 0]) == ROAD and int(official[100, 100, 3]) == FREE_ID
    # clean voxel centres -0.8, -0.4, 0.0 are <= 0 -> 3 layers everywhere
    assert int((flat_ground_prediction("occ3d") != FREE_ID).sum()) == 200 * 200 * 3
    gt = torch.full(OCC3D_SHAPE, FREE_ID, dtype=torch.uint8)
    gt[:, :, 1] = ROAD
    acc = OccupancyMetricAccumulator("occ3d")
    acc.add(gt, gt)
    out = acc.compute()
    assert out["occ/iou"] == 1.0
    assert out["occ/baseline/flat_ground/iou"] == pytest.approx(1.0 / 3.0)  # 1 true layer of 3 predicted
    assert out["occ/baseline/flat_ground/iou/driveable_surface"] == pytest.approx(1.0 / 3.0)
    assert acc.summary()["occ/protocol"] == "occ3d"


def test_format_table_shows_model_and_baselines():
    occ = OccupancyMetricAccumulator("selfocc")
    gt = _block(CAR, 50, 60)
    occ.add(_block(CAR, 51, 61), gt)
    depth = DepthMetricAccumulator(baseline_depth_m=4.0)
    g = torch.tensor([2.0, 4.0, 8.0])
    depth.add(2 * g, g, "CAM_FRONT")
    novel = NovelDepthAccumulator()
    novel.add(2 * g, g, 2.5, "CAM_BACK")
    text = format_table(merge_results(occ.summary(), depth.compute(), novel.compute(), {"fps": 1.5}))
    assert "protocol selfocc" in text and "flat ground" in text
    assert "81.82" in text  # car IoU 360 / 440 in percent
    assert "1.0000" in text and "const" in text and "(2,3] m" in text
    assert "fps: 1.5" in text  # keys outside the known blocks are still printed
    assert text.count("Novel depth") == 1 and "mean median scale factor: 0.5000" in text


# ---------------------------------------------------------------- all-reduce over two gloo ranks


def _fill(rank_items, depth, novel, occ):
    for i in rank_items:
        g = torch.tensor([2.0 + i, 5.0, 9.0 - 0.5 * i])
        depth.add(g * (1.0 + 0.1 * i), g, i % 2)
        novel.add(g * (1.0 + 0.2 * i), g, 0.6 * i, i % 2)
        occ.add(_block(CAR, 50 + i, 60 + i), _block(CAR, 50, 60))


def _accumulators():
    cams = ("CAM_FRONT", "CAM_BACK")
    return (
        DepthMetricAccumulator(cams, baseline_depth_m=5.0),
        NovelDepthAccumulator(cams),
        OccupancyMetricAccumulator("selfocc"),
    )


def _worker(rank: int, init_file: str, out_file: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    accs = _accumulators()
    _fill(range(rank, 6, 2), *accs)
    result = merge_results(*(a.compute() for a in accs))
    if rank == 0:
        torch.save(result, out_file)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_over_two_ranks_equals_one_process():
    """Two gloo ranks, each with half the samples, report exactly what one process with all of them does."""
    accs = _accumulators()
    _fill(range(6), *accs)
    single = merge_results(*(a.compute() for a in accs))
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "out.pt")
        # spawn, not fork: a forked child can hang in the parent's OpenMP pool
        torch.multiprocessing.spawn(_worker, args=(os.path.join(tmp, "init"), out_file), nprocs=2)
        both = torch.load(out_file)
    assert set(both) == set(single)
    for key, value in single.items():
        assert both[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert both["occ/num_samples"] == 6.0 and both["depth/num_images"] == 6.0

"""`semantic_label_space="openseed"` (the official occ preset): 21 OpenSeeD labels written and checked, a 21-channel
head trained on them, and the official eval mapping (argmax over 21 -> openseed2nuscenes, sky empty in the mIoU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from selfocc_ns.data.datamanager import SelfOccDataManagerConfig
from selfocc_ns.data.label_maps import (
    OPENSEED_PROMPTS,
    OPENSEED_SKY_ID,
    check_label_ids,
    folder_label_space,
    get_label_map,
    occupancy_class_lut,
)
from selfocc_ns.data.nuscenes import SelfOccNuScenesDataParserConfig
from selfocc_ns.data.occ3d import CLASS_ID, FREE_ID, IGNORE_ID, OCC3D_PALETTE, OCC3D_SHAPE, SKY_ID
from selfocc_ns.eval.runner import predict_occupancy
from selfocc_ns.metrics import OccupancyMetricAccumulator, semantic_ids
from selfocc_ns.model.field_grid import FieldGrid
from selfocc_ns.scripts.labels import LabelsConfig, run_labels

OFFICIAL_OPENSEED2NUSCENES = [1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 9, 10, 11, 12, 13, 14, 14, 15, 15, 16, 0]
"""The official table (utils/metric_util.py), OpenSeeD prompt id -> nuScenes/Occ3D id; sky -> 0."""
CENTRES_RANGE_M = (-39.8, -39.8, -0.8, 39.8, 39.8, 5.2)


def test_the_label_space_maps():
    assert occupancy_class_lut("openseed").tolist() == OFFICIAL_OPENSEED2NUSCENES
    assert occupancy_class_lut("occ3d").tolist() == list(range(18))
    assert get_label_map("openseed", "openseed")[:22].tolist() == list(range(21)) + [IGNORE_ID]
    from_occ3d = get_label_map("from-occ3d", "openseed")
    assert from_occ3d[0] == IGNORE_ID and from_occ3d[SKY_ID] == OPENSEED_SKY_ID
    assert from_occ3d[CLASS_ID["pedestrian"]] == OPENSEED_PROMPTS.index("person")
    # every Occ3D class goes to a prompt the official table sends back to it
    for label in range(1, 17):
        assert OFFICIAL_OPENSEED2NUSCENES[from_occ3d[label]] == label
    with pytest.raises(ValueError, match="label space 'openseed'"):
        get_label_map("from-occ3d", "occ3d")
    check_label_ids(np.array([[0, 20, 255]], np.uint8), "openseed", "x.png")
    with pytest.raises(ValueError, match="outside the 'occ3d' label space"):
        check_label_ids(np.array([[0, 20]], np.uint8), "occ3d", "x.png")


def one_hot_grid(classes: np.ndarray, channels: int = 21) -> FieldGrid:
    """A grid at the Occ3D voxel centres: SDF -1 where `classes` >= 0 (occupied), else +1; one-hot logits."""
    sdf = np.where(classes >= 0, -1.0, 1.0).astype(np.float32)
    logits = np.zeros((channels,) + OCC3D_SHAPE, dtype=np.float32)
    np.put_along_axis(logits, np.maximum(classes, 0)[None].astype(np.int64), 10.0, axis=0)
    return FieldGrid(torch.from_numpy(np.concatenate([sdf[None], logits])[None]), CENTRES_RANGE_M, 0, channels)


def test_argmax_over_21_mapped_officially_and_sky_empty_in_the_miou_only():
    """GT: a car block of 400 voxels. Prediction: the same block with argmax 'car' (3), plus 100 voxels with argmax
    'sky' (20) where the GT is free. IoU = 400 / (400 + 100) = 0.8 (sky counts as occupied); car IoU = 1 and the
    mIoU (classes 1..16 with data: car) = 1 (sky has no class)."""
    logits = torch.zeros(2, 21)
    logits[0, 3], logits[1, OPENSEED_SKY_ID] = 1.0, 1.0
    assert semantic_ids(logits, "openseed").tolist() == [CLASS_ID["car"], 0]
    assert semantic_ids(torch.eye(21), "openseed").tolist() == OFFICIAL_OPENSEED2NUSCENES
    with pytest.raises(ValueError, match="need 21 channels"):
        semantic_ids(torch.zeros(2, 18), "openseed")
    classes = np.full(OCC3D_SHAPE, -1)
    classes[100:110, 90:100, 2:6] = OPENSEED_PROMPTS.index("car")
    classes[80:85, 90:100, 2:4] = OPENSEED_SKY_ID
    gt = torch.full(OCC3D_SHAPE, FREE_ID)
    gt[100:110, 90:100, 2:6] = CLASS_ID["car"]
    pred, _ = predict_occupancy(one_hot_grid(classes), "selfocc", 0.0, label_space="openseed")
    assert int((pred == CLASS_ID["car"]).sum()) == 400 and int((pred == 0).sum()) == 100
    acc = OccupancyMetricAccumulator("selfocc", flat_ground_baseline_z_m=None)
    acc.add(pred, gt, torch.ones(OCC3D_SHAPE))
    r = acc.compute()
    assert r["occ/iou"] == pytest.approx(0.8) and r["occ/iou/car"] == pytest.approx(1.0)
    assert r["occ/miou"] == pytest.approx(1.0) and r["occ/num_classes_scored"] == 1
    # the same logits read as an Occ3D head would take channel 3 = bus and skip channel 20
    occ3d_pred, _ = predict_occupancy(one_hot_grid(classes), "selfocc", 0.0)
    assert int((occ3d_pred == CLASS_ID["bus"]).sum()) == 400


@pytest.fixture(scope="module")
def openseed_world(small_world, tmp_path_factory):
    """The small world's Occ3D labels relabelled as OpenSeeD ids by `selfocc-labels --source-labels`."""
    out = tmp_path_factory.mktemp("openseed_labels")
    summary = run_labels(LabelsConfig(source_labels=small_world / "semantics", label_space="openseed",
                                      data_dir=small_world, version="v1.0-mini", split="all", include_sweeps=True,
                                      out_dir=out))
    assert summary.written == len(list((small_world / "semantics").rglob("*.png"))) > 0
    return small_world, out / "semantics"


def test_relabelled_world_holds_openseed_ids_and_declares_them(openseed_world):
    world, labels_dir = openseed_world
    assert folder_label_space(labels_dir) == "openseed" and folder_label_space(world / "semantics") == "occ3d"
    source = sorted((world / "semantics" / "CAM_FRONT").glob("*.png"))[0]
    occ3d = np.asarray(Image.open(source))
    openseed = np.asarray(Image.open(labels_dir / "CAM_FRONT" / source.name))
    np.testing.assert_array_equal(openseed, get_label_map("from-occ3d", "openseed")[occ3d])
    assert (openseed == OPENSEED_SKY_ID).any() and openseed[openseed != IGNORE_ID].max() <= 20
    with pytest.raises(ValueError, match="already holds 'openseed' labels"):
        run_labels(LabelsConfig(source_labels=world / "semantics", data_dir=world, version="v1.0-mini", split="all",
                                out_dir=labels_dir.parent))
    with pytest.raises(ValueError, match="exactly one of --segmentor"):
        run_labels(LabelsConfig(data_dir=world, version="v1.0-mini", split="all"))


def labelled_datamanager(world, semantics_dir, label_space):
    config = SelfOccDataManagerConfig(
        dataparser=SelfOccNuScenesDataParserConfig(data_dir=world, semantics_dir=semantics_dir), num_workers=0,
        use_semantics="on")
    dm = config.setup(device="cpu", test_mode="val")
    dm.set_semantic_label_space(label_space)
    return dm


def test_the_datamanager_checks_the_label_space(openseed_world):
    world, labels_dir = openseed_world
    batch, _ = labelled_datamanager(world, labels_dir, "openseed").next_train(0)
    assert int(batch.semantics.max()) == OPENSEED_SKY_ID
    with pytest.raises(ValueError, match="are 'openseed' labels"):
        labelled_datamanager(world, labels_dir, "occ3d").next_train(0)
    with pytest.raises(ValueError, match="are 'occ3d' labels"):
        labelled_datamanager(world, world / "semantics", "openseed").next_train(0)


def test_a_21_channel_head_trains_on_openseed_labels(openseed_world):
    """The occ preset's semantic set-up at tiny scale: 21 logits rendered, CE against the OpenSeeD labels, and the
    sky-free loss on id 20; a head of the wrong width is refused before anything is built."""
    from nerfstudio.data.scene_box import SceneBox

    from selfocc_ns.configs import tiny

    world, labels_dir = openseed_world
    config = tiny.trainer_config()
    model_cfg = config.pipeline.model
    model_cfg.semantic_label_space = "openseed"
    model_cfg.sky_free_loss_weight = 0.1
    with pytest.raises(ValueError, match="'openseed' has 21 classes"):
        model_cfg.setup(scene_box=SceneBox(torch.zeros(2, 3)), num_train_data=1, metadata={})
    model_cfg.field = type(model_cfg.field)(**{**model_cfg.field.__dict__, "num_semantic_classes": 21})
    config.pipeline.datamanager.dataparser = SelfOccNuScenesDataParserConfig(data_dir=world, semantics_dir=labels_dir)
    config.pipeline.datamanager.num_workers = 0
    torch.manual_seed(0)
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    assert pipeline.datamanager.semantic_label_space == "openseed"
    outputs, losses, _ = pipeline.get_train_loss_dict(0)
    assert outputs["render"].semantics.shape[-1] == 21
    assert torch.isfinite(losses["semantic_loss"]) and losses["semantic_loss"] > 0
    assert torch.isfinite(losses["sky_free_loss"])
    sum(losses.values()).backward()
    head = pipeline.model.field.decoder[-1].weight
    assert head.shape[0] == 1 + 3 + 21 and head.grad[4:].abs().sum() > 0


def test_viewer_colours_openseed_channels_by_their_occ3d_class():
    from selfocc_ns.viewer.render import semantic_colours

    probs = torch.zeros(2, 21)
    probs[0, OPENSEED_PROMPTS.index("person")], probs[1, OPENSEED_SKY_ID] = 1.0, 1.0
    colours = semantic_colours(probs, torch.ones(2, 1), "openseed")
    expected = torch.as_tensor(OCC3D_PALETTE[[CLASS_ID["pedestrian"], SKY_ID]], dtype=torch.float32) / 255.0
    torch.testing.assert_close(colours, expected)

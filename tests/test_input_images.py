"""The network's input images and the loss images, official conventions: photometric augmentation (draws, order,
a hand-computed case, OpenCV's float HSV), the float INTER_LINEAR resize, the /256 loss images; all replayable."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from selfocc_ns.data.datamanager import SelfOccDataManagerConfig
from selfocc_ns.data.dataset import PHOTOMETRIC_STREAM, ImageGeometryConfig, input_image, load_rgb
from selfocc_ns.data.nuscenes import SelfOccNuScenesDataParserConfig
from selfocc_ns.data.photometric import (
    PhotometricDraws,
    apply_photometric,
    bgr_to_hsv_reference,
    draw_photometric,
    hsv_to_bgr_reference,
)
from selfocc_ns.data.sampling import FrameSamplingConfig, step_generator


def test_opencv_float_hsv_matches_the_numpy_reference():
    rng = np.random.default_rng(0)
    bgr = (rng.random((40, 50, 3)) * 300 - 20).astype(np.float32)  # unclipped values, as after brightness
    bgr[0, :3] = [[10, 10, 10], [0, 0, 0], [50, 100, 200]]
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    np.testing.assert_allclose(hsv, bgr_to_hsv_reference(bgr), atol=1e-3)
    hsv[..., 1] *= 1.15  # S > 1 and hue at the wrap, as the distortion produces
    hsv[..., 0] = np.mod(hsv[..., 0] + 17.0, 361.0)
    np.testing.assert_allclose(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), hsv_to_bgr_reference(hsv), atol=1e-3)


def test_a_hand_computed_distortion():
    """BGR (50, 100, 200): H = 60 (100 - 50) / 150 = 20 deg, S = 0.75, V = 200; hue + 10 -> 30 deg, saturation
    x 0.8 -> 0.6; back to BGR (sector 0, f = 0.5): (V (1 - S), V (1 - S (1 - f)), V) = (80, 140, 200). A grey pixel
    100 gets brightness + 10 and contrast x 1.1 first: 121 (saturation and hue do nothing to grey)."""
    image = np.array([[[50.0, 100.0, 200.0], [100.0, 100.0, 100.0]]], dtype=np.float32)
    colour = apply_photometric(image[:, :1], PhotometricDraws(saturation_scale=0.8, hue_delta_deg=10.0))
    np.testing.assert_allclose(colour[0, 0], [80.0, 140.0, 200.0], atol=1e-3)
    grey = apply_photometric(image[:, 1:], PhotometricDraws(10.0, True, 1.1, 0.8, 10.0))
    np.testing.assert_allclose(grey[0, 0], [121.0] * 3, atol=1e-3)
    # contrast last (mode 0) multiplies after the HSV round trip: (80, 140, 200) x 0.5; no clipping at 0 or 255
    late = apply_photometric(image[:, :1], PhotometricDraws(-100.0, False, 0.5))
    np.testing.assert_allclose(late[0, 0], np.array([-50.0, 0.0, 100.0]) * 0.5, atol=1e-3)


def test_draws_follow_the_official_order_and_ranges():
    """Each step fires with probability 1/2 and draws from its range; the contrast position is a fair coin;
    the same generator state gives the same draws (what resuming a run replays)."""
    rng = np.random.default_rng(7)
    draws = [draw_photometric(rng) for _ in range(4000)]
    for name, (low, high) in (("brightness_delta", (-32, 32)), ("saturation_scale", (0.8, 1.2)),
                              ("hue_delta_deg", (-18, 18)), ("contrast_alpha", (0.8, 1.2))):
        values = np.array([getattr(d, name) for d in draws if getattr(d, name) is not None])
        assert abs(len(values) / len(draws) - 0.5) < 0.03, name
        assert low <= values.min() and values.max() <= high and abs(values.mean() - (low + high) / 2) < 0.05 * (high - low)
    assert abs(np.mean([d.contrast_first for d in draws]) - 0.5) < 0.03
    # seven coins / uniforms in official order: a generator drawing the same sequence by hand agrees
    first = np.random.default_rng(11)
    coin_b, brightness = first.integers(2), None
    if coin_b:
        brightness = first.uniform(-32, 32)
    mode = first.integers(2)
    assert draw_photometric(np.random.default_rng(11)).brightness_delta == brightness
    assert draw_photometric(np.random.default_rng(11)).contrast_first == bool(mode)
    assert draw_photometric(np.random.default_rng(3)) == draw_photometric(np.random.default_rng(3))


def test_official_resize_is_the_two_by_two_mean_on_float():
    """cv2 INTER_LINEAR at exactly 1/2 averages each 2x2 block; PIL's bilinear (antialiased) does not. The
    intrinsics scale by 1/2 either way."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    k = np.array([[10.0, 0, 6.0], [0, 10.0, 4.0], [0, 0, 1.0]])
    geometry = ImageGeometryConfig(input_crop_fraction=1.0, scale_rate=0.5, resize="official")
    image, k_small = input_image(Image.fromarray(pixels), k, geometry)
    block_mean = pixels.astype(np.float64).reshape(4, 2, 6, 2, 3).mean(axis=(1, 3)) / 255.0
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), block_mean, atol=1e-6)
    np.testing.assert_allclose(k_small, np.array([[5.0, 0, 3.0], [0, 5.0, 2.0], [0, 0, 1.0]]))
    pil, _ = input_image(Image.fromarray(pixels), k, dataclasses.replace(geometry, resize="pil_bilinear"))
    assert pil.shape == image.shape and (pil - image).abs().max() > 0.01
    # the official size is int(size * scale): a 77-row crop gives 38 rows
    odd, k_odd = input_image(Image.fromarray(np.zeros((77, 12, 3), np.uint8)), k, geometry)
    assert odd.shape[-2:] == (38, 6) and k_odd[1, 1] == pytest.approx(10.0 * 38 / 77)


@pytest.fixture(scope="module")
def datamanagers(small_world):
    """Datamanagers with the default images, the official resize and /256 loss images, and also the photometric
    augmentation."""

    def make(**fields):
        config = SelfOccDataManagerConfig(dataparser=SelfOccNuScenesDataParserConfig(data_dir=small_world),
                                          num_workers=0, sampling=FrameSamplingConfig(cur_prob=1.0), **fields)
        return config.setup(device="cpu", test_mode="val")

    official = dict(loss_image_scale=1 / 256, geometry=ImageGeometryConfig(resize="official"))
    return make(), make(**official), make(photometric_augmentation=True, **official)


def test_training_inputs_are_distorted_per_camera_and_replayed_per_step(datamanagers):
    plain, resized, augmented = datamanagers
    a, _ = plain.next_train(4)
    r, _ = resized.next_train(4)
    b, _ = augmented.next_train(4)
    assert b.info["frame_indices"] == a.info["frame_indices"]  # the photometric draws use their own stream
    # loss images: the same pixels, divided by 256 instead of 255; never augmented
    torch.testing.assert_close(r.anchor_images, a.anchor_images * (255 / 256), atol=1e-6, rtol=0)
    torch.testing.assert_close(b.source_images, r.source_images, atol=0, rtol=0)
    assert r.images.shape == a.images.shape == (1, 6, 3, 38, 80)
    # inputs: camera c gets the c-th draws of the item's photometric stream, applied before the resize
    index = augmented.train_index
    t = b.info["frame_indices"][0][0]
    frame = index.scenes[index.samples[0][0]].frames[t]
    rng = step_generator(augmented.config.seed, 4, 0, 0, stream=PHOTOMETRIC_STREAM)
    geometry = augmented.config.geometry
    distorted = 0
    for c, channel in enumerate(index.cameras):
        cam = frame.cameras[channel]
        draws = draw_photometric(rng)
        expected, _ = input_image(load_rgb(cam.image_path, "test"), cam.intrinsics, geometry, draws)
        torch.testing.assert_close(b.images[0, c], expected, atol=1e-6, rtol=0)
        changed = any(v is not None for v in (draws.brightness_delta, draws.contrast_alpha, draws.saturation_scale,
                                              draws.hue_delta_deg))
        assert bool((b.images[0, c] - r.images[0, c]).abs().max() > 1e-4) == changed
        distorted += changed
    assert distorted >= 3  # each camera is left alone with probability 1/16
    again = dataclasses.replace(augmented.config, num_workers=0).setup(device="cpu", test_mode="val")
    torch.testing.assert_close(again.next_train(4)[0].images, b.images, atol=0, rtol=0)  # a resume replays step 4
    assert not torch.equal(augmented.next_train(5)[0].images, b.images)
    # evaluation and the eval loss never see the distortion
    torch.testing.assert_close(augmented.next_eval_image(0)[0].images, resized.next_eval_image(0)[0].images)
    torch.testing.assert_close(augmented.next_eval(2)[0].images, resized.next_eval(2)[0].images)

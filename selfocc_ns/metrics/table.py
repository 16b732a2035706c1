"""A readable plain-text summary of the flat metric dicts, baselines beside the model.

`format_table(results)` recognises the blocks the accumulators write by their marker keys
(`<p>/num_voxels_scored`: occupancy, `<p>/num_points`: depth, `<p>/num_images` without
`num_points`: novel depth) and prints every other key it was given at the end, so nothing in
the dict goes unseen. Occupancy numbers are printed in percent (the paper's unit), depth as is.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set

from selfocc_ns.data.occ3d import OCC3D_CLASSES
from selfocc_ns.metrics.depth import DEPTH_METRIC_NAMES, DEPTH_MODES


def _num(value: Optional[float], percent: bool = False, width: int = 10) -> str:
    if value is None:
        return "-".rjust(width)
    return f"{value * 100:.2f}".rjust(width) if percent else f"{value:.4f}".rjust(width)


def _mean_std(results: Mapping[str, Any], key: str) -> str:
    if key not in results:
        return "-".rjust(19)
    std = results.get(f"{key}_std")
    text = f"{results[key]:.4f}" + (f" ± {std:.4f}" if std is not None else "")
    return text.rjust(19)


def _occupancy_block(results: Mapping[str, Any], p: str, used: Set[str]) -> List[str]:
    base = f"{p}/baseline/flat_ground"
    has_base = any(k.startswith(base) for k in results)
    samples, voxels = int(results.get(f"{p}/num_samples", 0)), int(results.get(f"{p}/num_voxels_scored", 0))
    lines = [
        f"Occupancy [{p}] protocol {results.get(f'{p}/protocol', '?')}: {samples} samples, {voxels} voxels scored"
        " (values in %)",
        f"{'':22}{'model':>10}" + (f"{'flat ground':>14}" if has_base else ""),
    ]
    rows = [("IoU (geometry)", "iou"), ("precision", "precision"), ("recall", "recall"), ("mIoU (mean)", "miou")]
    rows += [("mIoU (sum / 17)", "miou_sum17")]
    rows += [(name, f"iou/{name}") for name in OCC3D_CLASSES[:17]]
    for label, suffix in rows:
        key, bkey = f"{p}/{suffix}", f"{base}/{suffix}"
        if key not in results and bkey not in results:
            continue
        line = f"{label:22}{_num(results.get(key), True)}"
        if has_base:
            line += _num(results.get(bkey), True, 14)
        lines.append(line)
    used.update(k for k in results if k.startswith(f"{p}/"))
    return lines


def _depth_block(results: Mapping[str, Any], p: str, used: Set[str]) -> List[str]:
    has_base = f"{p}/baseline/depth_m" in results
    header = f"{'metric':10}"
    for mode in DEPTH_MODES:
        header += f"{mode + ' model':>19}" + (f"{mode + ' const':>14}" if has_base else "")
    lines = [
        f"Depth [{p}]: {int(results.get(f'{p}/num_images', 0))} images, "
        f"{int(results.get(f'{p}/num_points', 0))} points, "
        f"{int(results.get(f'{p}/num_images_without_points', 0))} images without points"
        + (f"; baseline = constant {results[f'{p}/baseline/depth_m']:.2f} m" if has_base else ""),
        header,
    ]
    for metric in DEPTH_METRIC_NAMES:
        line = f"{metric:10}"
        for mode in DEPTH_MODES:
            line += _mean_std(results, f"{p}/{mode}/{metric}")
            if has_base:
                line += _num(results.get(f"{p}/baseline/{mode}/{metric}"), width=14)
        lines.append(line)
    if f"{p}/median/scale" in results:
        lines.append(f"mean median scale factor: {results[f'{p}/median/scale']:.4f}")
    cams = sorted({m.group(1) for k in results if (m := re.fullmatch(rf"{re.escape(p)}/raw/([A-Z_]+)/abs_rel", k))})
    if cams:
        lines.append(f"{'camera':18}{'raw abs_rel':>12}{'raw a1':>10}{'med abs_rel':>12}{'med a1':>10}")
        for cam in cams:
            row = f"{cam:18}"
            for mode in DEPTH_MODES:
                row += _num(results.get(f"{p}/{mode}/{cam}/abs_rel"), width=12) + _num(
                    results.get(f"{p}/{mode}/{cam}/a1")
                )
            lines.append(row)
    used.update(k for k in results if k.startswith(f"{p}/"))
    return lines


def _novel_depth_block(results: Mapping[str, Any], p: str, used: Set[str]) -> List[str]:
    bins = sorted({int(m.group(1)) for k in results if (m := re.fullmatch(rf"{re.escape(p)}/bin_(\d+)m/abs_rel", k))})
    lines = [
        f"Novel depth [{p}]: {int(results.get(f'{p}/num_images', 0))} images (raw, bins by ceil(frame distance))",
        f"{'distance':12}{'images':>8}" + "".join(f"{m:>10}" for m in DEPTH_METRIC_NAMES),
    ]
    for k in bins:
        key = f"{p}/bin_{k}m"
        row = f"{f'({k - 1},{k}] m':12}{int(results.get(f'{key}/num_images', 0)):>8}"
        lines.append(row + "".join(_num(results.get(f"{key}/{m}")) for m in DEPTH_METRIC_NAMES))
    total = f"{'all':12}{int(results.get(f'{p}/num_images', 0)):>8}"
    lines.append(total + "".join(_num(results.get(f"{p}/{m}")) for m in DEPTH_METRIC_NAMES))
    used.update(k for k in results if k.startswith(f"{p}/"))
    return lines


def format_table(results: Mapping[str, Any], title: Optional[str] = None) -> str:
    """Plain-text tables of occupancy, depth and novel-depth results (baselines beside the model).

    Args:
        results: flat dict(s) from the accumulators' `compute()` / `summary()`, merged.
        title: optional first line.
    """
    used: Set[str] = set()
    blocks: List[List[str]] = []
    prefixes: Sequence[str] = sorted({k.rsplit("/", 1)[0] for k in results if "/" in k})
    for p in prefixes:
        if f"{p}/num_voxels_scored" in results:
            blocks.append(_occupancy_block(results, p, used))
    for p in prefixes:
        if f"{p}/num_points" in results:
            blocks.append(_depth_block(results, p, used))
    for p in prefixes:
        already_shown = any(k.startswith(f"{p}/") for k in used)  # e.g. novel_depth/bin_3m inside novel_depth
        if f"{p}/num_images" in results and f"{p}/num_points" not in results and not already_shown:
            blocks.append(_novel_depth_block(results, p, used))
    others = [k for k in sorted(results) if k not in used]
    if others:
        blocks.append(["Other"] + [f"{k}: {results[k]}" for k in others])
    lines: List[str] = [title] if title else []
    for block in blocks:
        lines += block + [""]
    return "\n".join(lines).rstrip() + "\n"


def merge_results(*results: Mapping[str, Any]) -> Dict[str, Any]:
    """One flat dict from several (later ones win on a shared key)."""
    merged: Dict[str, Any] = {}
    for r in results:
        merged.update(r)
    return merged

"""Evaluation metrics of the official SelfOcc protocol (docs/evaluation.md), with baselines.

- depth: `depth_errors`, `sample_depth_at_points`, `lattice_read_mask`, `project_lidar`, `DepthMetricAccumulator`,
  `NovelDepthAccumulator`, `constant_median_depth_baseline`, `DepthHistogramMedian`;
- occupancy: `official_query_points`, `clean_query_points`, `official_occupancy_prediction`,
  `clean_occupancy_prediction`, `flat_ground_prediction`, `OccupancyMetricAccumulator`;
- `format_table` for a readable summary. Accumulators all-reduce over torch.distributed ranks.
"""

from selfocc_ns.metrics.depth import (
    DEPTH_METRIC_NAMES,
    DEPTH_MODES,
    LIDAR_MIN_DEPTH_M,
    PRED_MAX_DEPTH_M,
    PRED_MIN_DEPTH_M,
    DepthHistogramMedian,
    constant_median_depth_baseline,
    depth_error_vector,
    depth_errors,
    lattice_read_mask,
    median_scale_factor,
    project_lidar,
    sample_depth_at_points,
)
from selfocc_ns.metrics.depth_accumulators import DepthMetricAccumulator, NovelDepthAccumulator, distance_bin
from selfocc_ns.metrics.occupancy import (
    PROTOCOLS,
    OccupancyMetricAccumulator,
    apply_official_crops,
    clean_occupancy_prediction,
    clean_query_points,
    confusion_matrix,
    flat_ground_prediction,
    occupancy_prediction,
    official_occupancy_prediction,
    official_query_points,
    query_points,
    semantic_ids,
)
from selfocc_ns.metrics.table import format_table, merge_results

__all__ = [
    "DEPTH_METRIC_NAMES",
    "DEPTH_MODES",
    "LIDAR_MIN_DEPTH_M",
    "PRED_MAX_DEPTH_M",
    "PRED_MIN_DEPTH_M",
    "DepthHistogramMedian",
    "constant_median_depth_baseline",
    "depth_error_vector",
    "depth_errors",
    "lattice_read_mask",
    "median_scale_factor",
    "project_lidar",
    "sample_depth_at_points",
    "PROTOCOLS",
    "OccupancyMetricAccumulator",
    "apply_official_crops",
    "clean_occupancy_prediction",
    "clean_query_points",
    "confusion_matrix",
    "flat_ground_prediction",
    "occupancy_prediction",
    "official_occupancy_prediction",
    "official_query_points",
    "query_points",
    "semantic_ids",
    "DepthMetricAccumulator",
    "NovelDepthAccumulator",
    "distance_bin",
    "format_table",
    "merge_results",
]

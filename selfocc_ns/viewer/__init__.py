"""The SelfOcc viewer inside nerfstudio's: controls (`controls`), free-viewpoint renders (`render`), scene layers
(`scene`) and the eval samples it shows (`samples`). `attach_viewer(pipeline)` wires it to a pipeline."""

from selfocc_ns.viewer.controls import OccupancyViewer, ViewerSettings, attach_viewer

__all__ = ["OccupancyViewer", "ViewerSettings", "attach_viewer"]

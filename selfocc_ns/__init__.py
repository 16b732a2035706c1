"""selfocc-ns: SelfOcc (self-supervised vision-only 3D occupancy) as a nerfstudio plugin method."""

__version__ = "0.1.0"

"""Data path: the embedded synthetic world, the nuScenes dataparser, the datamanager."""

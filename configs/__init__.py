"""SelfOcc presets (installed as `selfocc_ns.configs`): one module per official config, plus `tiny` for the CPU.

Each module has `trainer_config() -> SelfOccTrainerConfig`; `selfocc_ns.methods` registers them with nerfstudio.
The config classes' defaults are the official nuscenes_occ values; each preset states only what differs.
"""

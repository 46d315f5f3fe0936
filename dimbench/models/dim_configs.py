"""DiM's registered configurations: the sizes of the paper and the released checkpoints'.

Data only, so that both the model (``dim.py``, which registers them) and the official-checkpoint
reader (``dim_official.py``, which names the configuration a file was trained with) import it.
"""

DIM_CONFIGS: dict[str, dict] = {
    "DiM-T/2": dict(hidden_size=64, depth=7),  # tiny, for tests: 7 blocks use all four orders
    "DiM-S/2": dict(hidden_size=512, depth=25),
    "DiM-L/2": dict(hidden_size=1024, depth=49),
    "DiM-H/2": dict(hidden_size=1536, depth=49),
}

# The released checkpoints' configurations (tyshiwo1/DiM-DiffusionMamba configs/
# imagenet256_L_DiM.py, imagenet256_H_DiM.py, imagenet512_H_DiM_ft.py; see dim_official.py).
RELEASED_CONFIGS: dict[str, dict] = {
    "DiM-L/2-imagenet256": dict(DIM_CONFIGS["DiM-L/2"], timestep_shift=1),
    "DiM-H/2-imagenet256": dict(DIM_CONFIGS["DiM-H/2"], timestep_shift=1),
    "DiM-H/2-imagenet512ft": dict(DIM_CONFIGS["DiM-H/2"], timestep_shift=1, pad_layout="cyclic"),
}

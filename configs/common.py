"""The base of every configs/*.py file: each field of a training run at its default (the paper's settings).

`base_config()` is built from the schema in bpr_jax/config_schema.py, where each field's type,
default, allowed values, description and resume class are declared (one place); a config file starts
from it and sets what differs, so a typo in a command-line override (`--config.batch_sise=...`) is an
error, not a silently ignored new field.  To see every field with a config's values:

  python -m bpr_jax.main --config=configs/tiny.py --show_config
"""
from bpr_jax.config_schema import base_config, env_path

__all__ = ["base_config", "env_path"]

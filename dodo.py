"""doit entry point: load images.toml, ask the pipeline for its tasks. Run `doit list`.

IMAGES_TOML=path/to/other.toml selects another config file.
"""

import os
from pathlib import Path

from pipeline import config
from pipeline.config import source_date_epoch
from pipeline.tasks import creators, exit_on_config_error

DOIT_CONFIG = {
    "default_tasks": ["build:baguette"],
    "verbosity": 2,
    # sqlite commits atomically: a build killed while doit saves its state (or a power cut)
    # cannot leave a half-written file that stops every later run, as the json backend can
    "dep_file": ".doit.db.sqlite",
    "backend": "sqlite3",
    "par_type": "thread",  # `doit -n 2`: stages are I/O- and QEMU-bound, threads suffice
}

CONFIG_PATH = Path(os.environ.get("IMAGES_TOML") or Path(__file__).parent / "images.toml")
CONFIG = exit_on_config_error(lambda: config.load(CONFIG_PATH.resolve()))

SOURCE_DATE_EPOCH = exit_on_config_error(source_date_epoch)
globals().update(exit_on_config_error(lambda: creators(CONFIG, SOURCE_DATE_EPOCH)))

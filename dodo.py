"""doit entry point: load images.toml, ask the pipeline for its tasks. Run `doit list`."""

from pathlib import Path

from pipeline import config
from pipeline.build import source_date_epoch
from pipeline.tasks import creators, exit_on_config_error

DOIT_CONFIG = {
    "default_tasks": ["build:baguette"],
    "verbosity": 2,
    "dep_file": ".doit.db",
    "backend": "json",
}

CONFIG = exit_on_config_error(lambda: config.load(Path(__file__).parent / "images.toml"))

globals().update(creators(CONFIG, exit_on_config_error(source_date_epoch)))

"""doit entry point: the tasks of images.toml beside this file. Run `doit list`.

IMAGES_TOML=path/to/other.toml selects another config file; `cros-guest` (pipeline/cli.py)
is the same without a dodo.py.
"""

from pipeline.cli import dodo_namespace

globals().update(dodo_namespace(__file__))

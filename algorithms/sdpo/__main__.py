"""``python -m algorithms.sdpo``: the training command line with ``--algo sdpo`` preset."""

import sys

from algorithms.commands.train import main

sys.exit(main(algo="sdpo"))

"""``python -m algorithms.grpo``: ``rlrf train --algo grpo``."""

import sys

from algorithms.commands.train import main

sys.exit(main(algo="grpo"))

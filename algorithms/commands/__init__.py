"""The ``rlrf`` subcommands that need the training stack: argparse only, no logic.

Each module parses its flags (from the shared vocabulary in
:mod:`~algorithms.commands.options`) and calls the logic it drives: ``train``
(:mod:`algorithms.engine.trainer`), ``eval`` (:mod:`algorithms.evaluation`), ``diagnose``
(:mod:`algorithms.diagnose`), ``ttsd`` (:mod:`algorithms.ttsd`), ``report``
(:mod:`algorithms.report`) and ``demo``. Nothing imports this package but the entry points.
"""

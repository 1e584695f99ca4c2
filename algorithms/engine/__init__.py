"""The training engine: the loop and what it needs, naming no algorithm.

:mod:`~algorithms.engine.trainer` (rollouts, batching, accumulation, the optimizer, the
run folder), :mod:`~algorithms.engine.parallel` (FSDP2 sharding; DDP through accelerate),
:mod:`~algorithms.engine.batching` (rows into padded tensors),
:mod:`~algorithms.engine.checkpoint` (resumable state), :mod:`~algorithms.engine.metrics`,
:mod:`~algorithms.engine.monitors` (stability alarms) and
:mod:`~algorithms.engine.allocator` (CPU memory reuse).
"""

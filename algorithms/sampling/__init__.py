"""Sampling backends that turn chat prompts into samples with token ids and log-probs.

:mod:`~algorithms.sampling.hf` (:class:`~algorithms.sampling.hf.HFPolicy`, the model's own
KV-cached loop), :mod:`~algorithms.sampling.vllm` (a colocated vLLM engine with weight sync)
and :mod:`~algorithms.sampling.endpoint` (an OpenAI-compatible endpoint, for evaluation:
it returns no token ids to train on). The interface they implement,
:class:`rlrf.SamplingBackend`, is torch-free and lives in :mod:`rlrf.sampling`.
"""

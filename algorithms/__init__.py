"""Algorithms that consume the common trajectory format: GRPO, SDPO, the successful-rollout variant."""

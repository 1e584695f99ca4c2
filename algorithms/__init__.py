"""Algorithms on the common trajectory format: GRPO, SDPO and the successful-rollout variant."""

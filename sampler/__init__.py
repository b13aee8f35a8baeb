"""Rollouts: vLLM and HF samplers, rollout collection over envs, and eval."""

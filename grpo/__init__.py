"""The GRPO/PPO learner on DeepSpeed and its pure loss/advantage functions."""

"""thinkgym: a gym for reinforcement learning with verifiable rewards on reasoning.

Rooms (each its own subpackage): ``thinkgym.tasks`` (problem sources), ``thinkgym.verifiers``
(graders), ``thinkgym.envs`` (Gymnasium environments), ``thinkgym.sampler`` (vLLM / HF rollouts
and eval), ``thinkgym.sft_coldstart`` (cold-start SFT) and ``thinkgym.grpo`` (the RL learner).
Importing this package imports none of them.
"""

__version__ = "0.1.0"

"""Gymnasium environments over task sources and graders.

Importing this package registers every env id with Gymnasium (``gymnasium.make("thinkgym/
Countdown-v0")``). Without importing it first, use the module-qualified form Gymnasium
supports: ``gymnasium.make("thinkgym.envs:thinkgym/Countdown-v0")``.
"""

from thinkgym.envs.core import (
    DEFAULT_SYSTEM_PROMPT,
    TOOL_SYSTEM_PROMPT,
    MultiTurnEnv,
    SingleTurnEnv,
    TaskEnv,
    ToolEnv,
    default_feedback,
)
from thinkgym.envs.registration import ENVS, EnvInfo, env_id_for_task, list_envs, register_envs, task_source_for_env
from thinkgym.envs.spaces import TextSpace

register_envs()

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "ENVS",
    "TOOL_SYSTEM_PROMPT",
    "EnvInfo",
    "MultiTurnEnv",
    "SingleTurnEnv",
    "TaskEnv",
    "TextSpace",
    "ToolEnv",
    "default_feedback",
    "env_id_for_task",
    "list_envs",
    "register_envs",
    "task_source_for_env",
]

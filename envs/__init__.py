"""Gymnasium environments over task sources and graders."""


def register_envs() -> None:
    """Register every thinkgym env id with Gymnasium (idempotent)."""

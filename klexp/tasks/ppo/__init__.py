"""PPO on Gymnasium: the task, its rollout buffers and GAE, its policy families and the vector-env
factory."""

from klexp.tasks.ppo.envs import VectorEnvFactory
from klexp.tasks.ppo.task import PPOTask

__all__ = ["PPOTask", "VectorEnvFactory"]

"""PPO on Gymnasium: the task, its rollout buffers and GAE, its loss, its policy families, the
vector-env factory, and an environment whose KL-regularised optimum is known exactly."""

from klexp.tasks.ppo import token_env  # registers klexp/TokenSequence-v0 with Gymnasium
from klexp.tasks.ppo.envs import VectorEnvFactory
from klexp.tasks.ppo.task import PPOTask

__all__ = ["PPOTask", "VectorEnvFactory", "token_env"]

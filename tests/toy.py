"""A tiny offline trainer and buffer for testing the shared machinery without any dataset."""
import torch

from vla_rl_lib.nets import DeterministicPolicy
from vla_rl_lib.trainer import OfflineTrainer


class ToyBuffer:
    """obs ~ N(0, I); the 'expert' action is tanh of the first coordinates."""

    def __init__(self, n=512, obs_dim=3, action_dim=2, seed=1):
        g = torch.Generator().manual_seed(seed)
        self.obs = torch.randn(n, obs_dim, generator=g)
        self.act = torch.tanh(self.obs[:, :action_dim])
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.device = torch.device("cpu")
        self.env_id = None
        self.dataset_name = None

    def __len__(self):
        return len(self.obs)

    def sample(self, batch_size, generator=None):
        idx = torch.randint(0, len(self.obs), (batch_size,), generator=generator)
        return {"observations": self.obs[idx], "actions": self.act[idx]}


class ToyBC(OfflineTrainer):
    """Behaviour cloning with a deterministic policy (for tests of the loop only)."""

    algorithm = "toy_bc"

    def __init__(self, obs_dim, action_dim, config=None, scale=1.0, **kw):
        super().__init__(obs_dim, action_dim, config, **kw)
        self.policy = DeterministicPolicy(obs_dim, action_dim, hidden=(16, 16))
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.config.learning_rate)
        self.scale = scale

    def update(self, batch):
        pred = self.policy.get_action(batch["observations"])
        loss = self.scale * ((pred - batch["actions"]) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"policy_loss": loss}

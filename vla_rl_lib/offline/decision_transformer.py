"""Decision Transformer (Chen et al., "Decision Transformer: Reinforcement Learning via Sequence
Modeling", NeurIPS 2021).

Reinforcement learning as sequence modelling: a GPT-style causal transformer reads the last ``K``
steps of a trajectory as interleaved tokens

    (R_{t-K+1}, s_{t-K+1}, a_{t-K+1}, ..., R_t, s_t, a_t),   R_t = sum_{t' >= t} r_{t'} (return-to-go)

each embedded by its own linear layer plus a learned embedding of the timestep ``t``, and predicts
the action ``a_t`` from the output at the state token ``s_t`` (so ``a_t`` sees ``R_<=t``, ``s_<=t``
and ``a_<t`` only). Training is supervised regression on dataset subsequences:

    L = sum_{b,t} m_{b,t} ||a^_{b,t} - a_{b,t}||^2 / (sum_{b,t} m_{b,t} * action_dim)

(``m`` masks the padding after an episode's end), with AdamW, a linear learning-rate warmup over
``warmup_steps`` and gradient-norm clipping, as in the paper's code and CORL's ``dt.py``.

Acting: the model is conditioned on a target return ``R_0 = target_return``; after each step the
return-to-go is decremented by the reward received, ``R_{t+1} = R_t - r_t``. The trainer does that
through the ``observe_reward`` hook that ``Trainer.evaluate`` calls after every environment step.
Returns-to-go enter the network divided by ``reward_scale`` (1000 for the MuJoCo locomotion tasks,
as in the paper; the default). ``target_return`` defaults to the 90th percentile of the
dataset's episode returns (a high return the data shows is reachable; the single best episode can be
a lucky start, see docs/offline.md). States are always normalised with the dataset mean and std (as the paper's code does);
actions are predicted in [-1, 1] (tanh head) and mapped to the environment's bounds.

The policy (``trainer.policy``, a :class:`DecisionTransformerPolicy`) keeps its context inside:
``get_action(obs)`` appends ``obs`` to the context of a batch of parallel episodes and returns the
next actions; ``reset_context()`` starts new episodes and ``observe_reward(r)`` records rewards.
It has no action likelihood, entropy or value, so it cannot be handed to PPO/SAC/GRPO for online
fine-tuning (they raise ``NotImplementedError`` through ``log_prob``); use it to act and evaluate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vla_rl_lib.config import ConfigBase, hp
from vla_rl_lib.errors import ConfigError, DatasetError
from vla_rl_lib.nets import OutputLinear, Policy, adam
from vla_rl_lib.trainer import OfflineTrainer

__all__ = ["DTHyperparameters", "DecisionTransformerTrainer", "DecisionTransformer", "DecisionTransformerPolicy",
           "EpisodeSequenceSampler", "dt_action_loss", "warmup_factor"]

STATE_STD_EPS = 1e-6  # added to the state std, as the paper's code
DEFAULT_TARGET_PERCENTILE = 90.0  # default target return: this percentile of the dataset's episode returns


@dataclass
class DTHyperparameters(ConfigBase):
    context_length: int = hp(20, "DT: context window K (timesteps the transformer sees)", low=1, ui=(1, 100, 1))
    n_layer: int = hp(3, "DT: number of transformer blocks", low=1, ui=(1, 12, 1))
    n_head: int = hp(1, "DT: attention heads per block (must divide embed_dim)", low=1, ui=(1, 16, 1))
    embed_dim: int = hp(128, "DT: embedding (model) width", low=1, ui=(16, 512, 16))
    dropout: float = hp(0.1, "DT: dropout on embeddings, attention and residual branches", low=0, high=1,
                        high_open=True, ui=(0.0, 0.5, 0.05))
    target_return: Optional[float] = hp(None, "DT: return to condition on when acting (default: the 90th "
                                              "percentile of the dataset's episode returns)", nullable=True)
    reward_scale: float = hp(1000.0, "DT: returns-to-go are divided by this before entering the network "
                                     "(1000 for MuJoCo locomotion)", low=0, low_open=True)
    max_ep_len: int = hp(1000, "DT: size of the timestep embedding (longest episode)", low=1)
    warmup_steps: int = hp(10_000, "DT: linear learning-rate warmup steps", low=0)
    grad_clip: float = hp(0.25, "DT: gradient-norm clip (0: none)", low=0)

    def validate(self) -> None:
        super().validate()
        if self.embed_dim % self.n_head != 0:
            raise ConfigError(f"DTHyperparameters.embed_dim={self.embed_dim} is not divisible by "
                              f"n_head={self.n_head}; choose an embed_dim that is a multiple of n_head")


# ------------------------------------------------------------------------------------------------
# losses and schedule
# ------------------------------------------------------------------------------------------------
def dt_action_loss(pred: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked action regression ``L = sum m ||a^ - a||^2 / (sum m * action_dim)``.

    ``pred``, ``actions``: ``(B, K, action_dim)``; ``mask``: ``(B, K)``, 1 on real steps, 0 on padding.
    """
    sq = ((pred - actions) ** 2).sum(-1)
    return (sq * mask).sum() / (mask.sum().clamp_min(1.0) * actions.shape[-1])


def warmup_factor(warmup_steps: int):
    """Learning-rate multiplier ``min((step + 1) / warmup_steps, 1)`` (constant 1 without warmup)."""
    if warmup_steps <= 0:
        return lambda step: 1.0
    return lambda step: min((step + 1) / warmup_steps, 1.0)


# ------------------------------------------------------------------------------------------------
# the network
# ------------------------------------------------------------------------------------------------
class CausalSelfAttentionBlock(nn.Module):
    """Pre-LayerNorm GPT block: ``x + Drop(Attn(LN(x)))`` then ``x + Drop(MLP(LN(x)))``, causal."""

    def __init__(self, embed_dim: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(embed_dim)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.ln2 = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, 4 * embed_dim), nn.GELU(), nn.Linear(4 * embed_dim, embed_dim))
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.view(b, n, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class DecisionTransformer(nn.Module):
    """The sequence model: (R, s, a) tokens with timestep embeddings -> predicted unit actions."""

    def __init__(self, obs_dim: int, action_dim: int, context_length: int = 20, n_layer: int = 3, n_head: int = 1,
                 embed_dim: int = 128, dropout: float = 0.1, max_ep_len: int = 1000):
        super().__init__()
        self.context_length, self.max_ep_len, self.embed_dim = context_length, max_ep_len, embed_dim
        self.timestep_emb = nn.Embedding(max_ep_len, embed_dim)
        self.return_emb = nn.Linear(1, embed_dim)
        self.state_emb = nn.Linear(obs_dim, embed_dim)
        self.action_emb = nn.Linear(action_dim, embed_dim)
        self.emb_ln = nn.LayerNorm(embed_dim)
        self.emb_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(CausalSelfAttentionBlock(embed_dim, n_head, dropout) for _ in range(n_layer))
        self.out_ln = nn.LayerNorm(embed_dim)
        self.action_head = nn.Sequential(OutputLinear(embed_dim, action_dim), nn.Tanh())
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:  # GPT-2 initialisation
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, states, actions, returns_to_go, timesteps) -> torch.Tensor:
        """``states (B, T, obs_dim)`` normalised, ``actions (B, T, action_dim)`` in [-1, 1],
        ``returns_to_go (B, T)`` scaled, ``timesteps (B, T)`` -> predicted actions ``(B, T, action_dim)``."""
        b, t = states.shape[:2]
        time = self.timestep_emb(timesteps.clamp(0, self.max_ep_len - 1))
        tokens = torch.stack([self.return_emb(returns_to_go.unsqueeze(-1)) + time,
                              self.state_emb(states) + time,
                              self.action_emb(actions) + time], dim=2).reshape(b, 3 * t, self.embed_dim)
        x = self.emb_drop(self.emb_ln(tokens))
        for block in self.blocks:
            x = block(x)
        x = self.out_ln(x).view(b, t, 3, self.embed_dim)
        return self.action_head(x[:, :, 1])  # a_t is read at the state token s_t


class DecisionTransformerPolicy(Policy):
    """The acting side: state normaliser, action bounds, target return and a rolling context.

    ``get_action(obs)`` for a batch of ``B`` observations treats them as ``B`` parallel episodes:
    it appends them to the context (starting new episodes when ``B`` changes), runs the model on
    the last ``context_length`` steps and returns the actions. Call ``reset_context()`` at episode
    starts and ``observe_reward(rewards)`` after each step so the return-to-go is decremented.
    """

    def __init__(self, obs_dim: int, action_dim: int, context_length: int = 20, n_layer: int = 3, n_head: int = 1,
                 embed_dim: int = 128, dropout: float = 0.1, max_ep_len: int = 1000, reward_scale: float = 1000.0,
                 target_return: float = 0.0, action_low=None, action_high=None):
        super().__init__(obs_dim, action_dim, action_low, action_high)
        self.model = DecisionTransformer(obs_dim, action_dim, context_length, n_layer, n_head, embed_dim, dropout,
                                         max_ep_len)
        self.register_buffer("target_return", torch.tensor(float(target_return)))
        self.register_buffer("reward_scale", torch.tensor(float(reward_scale)))
        self.context_length = context_length
        self._ctx: Optional[dict] = None

    # -- context --------------------------------------------------------------------------------
    def reset_context(self, batch_size: int = 1, target_return: Optional[float] = None) -> None:
        """Start ``batch_size`` new episodes conditioned on ``target_return`` (default the stored one)."""
        dev = self.obs_mean.device
        rtg = self.target_return if target_return is None else torch.tensor(float(target_return), device=dev)
        self._ctx = {
            "states": torch.zeros(batch_size, 0, self.obs_dim, device=dev),
            "actions": torch.zeros(batch_size, 0, self.action_dim, device=dev),
            "rtg": torch.zeros(batch_size, 0, device=dev),
            "timesteps": torch.zeros(batch_size, 0, dtype=torch.long, device=dev),
            "next_rtg": rtg.expand(batch_size).clone().float(),
            "t": 0,
        }

    def observe_reward(self, reward) -> None:
        """Decrement the return-to-go by the reward(s) of the last step: ``R_{t+1} = R_t - r_t``."""
        if self._ctx is not None:
            self._ctx["next_rtg"] = self._ctx["next_rtg"] - torch.as_tensor(
                np.asarray(reward, dtype=np.float32), device=self._ctx["next_rtg"].device)

    def get_action(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        b = obs.shape[0]
        if self._ctx is None or self._ctx["states"].shape[0] != b:
            self.reset_context(b)
        c, k = self._ctx, self.context_length
        c["states"] = torch.cat([c["states"], self.normalize(obs).unsqueeze(1)], 1)[:, -k:]
        c["rtg"] = torch.cat([c["rtg"], c["next_rtg"].unsqueeze(1)], 1)[:, -k:]
        c["timesteps"] = torch.cat([c["timesteps"], torch.full((b, 1), c["t"], dtype=torch.long,
                                                               device=obs.device)], 1)[:, -k:]
        # the action token of the current step is a placeholder: causality keeps it out of a_t's input
        actions = torch.cat([c["actions"], torch.zeros(b, 1, self.action_dim, device=obs.device)], 1)[:, -k:]
        unit = self.model(c["states"], actions, c["rtg"] / self.reward_scale, c["timesteps"])[:, -1]
        c["actions"] = torch.cat([actions[:, :-1], unit.detach().unsqueeze(1)], 1)
        c["t"] += 1
        return self.scale_action(unit)


# ------------------------------------------------------------------------------------------------
# training data
# ------------------------------------------------------------------------------------------------
class EpisodeSequenceSampler:
    """Random length-``K`` windows of the dataset's episodes, padded at the end, with masks.

    As in the paper's code, an episode is drawn with probability proportional to its length and the
    window start uniformly within it, so every step is equally likely to start a window. ``sample``
    returns ``observations (B, K, obs_dim)`` and ``actions (B, K, act_dim)`` (raw),
    ``returns_to_go (B, K)`` (unscaled), ``timesteps (B, K)`` and ``mask (B, K)``.
    """

    def __init__(self, buffer, context_length: int):
        episodes = buffer.episodes()
        self.source = buffer
        self.obs_dim, self.action_dim = buffer.obs_dim, buffer.action_dim
        self.env_id, self.dataset_name = getattr(buffer, "env_id", None), getattr(buffer, "dataset_name", None)
        self.device = buffer.device
        self.context_length = int(context_length)
        obs = np.concatenate([e["observations"] for e in episodes]).astype(np.float32)
        if getattr(buffer, "normalize_states", False):  # episodes() gives normalised states: undo it
            obs = buffer.denormalize_observations(obs)
        lengths = np.array([len(e["actions"]) for e in episodes], dtype=np.int64)
        self.episode_returns = np.array([float(e["rewards"].sum(dtype=np.float64)) for e in episodes])
        self.max_length = int(lengths.max())
        dev = self.device
        self.observations = torch.as_tensor(obs, device=dev)
        self.actions = torch.as_tensor(np.concatenate([e["actions"] for e in episodes]), dtype=torch.float32, device=dev)
        self.returns_to_go = torch.as_tensor(np.concatenate([e["returns_to_go"] for e in episodes]),
                                             dtype=torch.float32, device=dev)
        self.lengths = torch.as_tensor(lengths, device=dev)
        self.starts = torch.as_tensor(np.concatenate([[0], np.cumsum(lengths)[:-1]]), device=dev)
        self.weights = self.lengths.double() / self.lengths.sum()
        self._offsets = torch.arange(self.context_length, device=dev)

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    def state_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        obs = self.observations.double()
        return obs.mean(0).float(), (obs.std(0, unbiased=False) + STATE_STD_EPS).float()

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None) -> dict:
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        ep = torch.multinomial(self.weights.to(gen_dev), int(batch_size), replacement=True,
                               generator=generator).to(self.device)
        length = self.lengths[ep]
        start = (torch.rand(int(batch_size), generator=generator, device=gen_dev).to(self.device)
                 * length).long()
        pos = start.unsqueeze(1) + self._offsets  # (B, K) position within the episode
        mask = pos < length.unsqueeze(1)
        pos = torch.minimum(pos, (length - 1).unsqueeze(1))
        rows = self.starts[ep].unsqueeze(1) + pos
        return {"observations": self.observations[rows], "actions": self.actions[rows],
                "returns_to_go": self.returns_to_go[rows], "timesteps": pos, "mask": mask.float()}


# ------------------------------------------------------------------------------------------------
# trainer
# ------------------------------------------------------------------------------------------------
class DecisionTransformerTrainer(OfflineTrainer):
    """Decision Transformer (see the module docstring).

    Example::

        trainer = DecisionTransformerTrainer(obs_dim=11, action_dim=3, config=OfflineRLConfig(),
                                             context_length=20, n_layer=3, n_head=1, embed_dim=128)
        trainer.train(buffer)              # buffer: an OfflineReplayBuffer (episodes are rebuilt from it)
        trainer.evaluate(num_episodes=10)  # conditioned on target_return (default: 90th percentile of the data)

    ``config.batch_size`` counts sequences of ``context_length`` steps. Logged metrics:
    ``policy_loss`` (the masked action MSE) and ``learning_rate``.
    """

    algorithm = "dt"
    Hyperparameters = DTHyperparameters

    def __init__(self, obs_dim: int, action_dim: int, config=None, callbacks=None, use_wandb: bool = False,
                 progress_bar: bool = False, **hparams):
        super().__init__(obs_dim, action_dim, config, callbacks, use_wandb, progress_bar, **hparams)
        h, cfg = self.hparams, self.config
        self.policy = DecisionTransformerPolicy(
            self.obs_dim, self.action_dim, h.context_length, h.n_layer, h.n_head, h.embed_dim, h.dropout,
            h.max_ep_len, h.reward_scale, target_return=h.target_return or 0.0).to(self.device)
        self.optimizer = adam(self.policy.parameters(), cfg.learning_rate, weight_decay=cfg.weight_decay,
                              decoupled=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_factor(h.warmup_steps))

    # -- dataset --------------------------------------------------------------------------------
    def attach_buffer(self, buffer) -> None:
        """Check sizes, index the buffer's episodes, and read bounds, state statistics and the
        default target return from the dataset; training then samples from the episode index."""
        if isinstance(buffer, EpisodeSequenceSampler):
            buffer = buffer.source
        super().attach_buffer(buffer)
        sampler = EpisodeSequenceSampler(buffer, self.hparams.context_length)
        if sampler.max_length > self.hparams.max_ep_len:
            raise ConfigError(f"the dataset has an episode of {sampler.max_length} steps but the Decision "
                              f"Transformer's timestep embedding covers max_ep_len={self.hparams.max_ep_len}; "
                              f"build the trainer with max_ep_len >= {sampler.max_length}")
        policy = self.policy
        policy.set_obs_normalization(*sampler.state_stats())
        policy.set_action_bounds(*self.action_bounds(buffer))
        target = self.hparams.target_return
        if target is None:
            target = float(np.percentile(sampler.episode_returns, DEFAULT_TARGET_PERCENTILE))
        policy.target_return.fill_(float(target))
        if not math.isfinite(float(policy.target_return)):
            raise DatasetError("the dataset's episode returns are not finite; the Decision Transformer cannot "
                               "pick a target return")
        self.buffer = sampler

    # -- one gradient step ----------------------------------------------------------------------
    def update(self, batch: dict) -> dict:
        policy = self.policy
        states = policy.normalize(batch["observations"])
        actions = policy.unscale_action(batch["actions"]).clamp(-1.0, 1.0)
        rtg = batch["returns_to_go"] / policy.reward_scale
        pred = policy.model(states, actions, rtg, batch["timesteps"])
        loss = dt_action_loss(pred, actions, batch["mask"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.hparams.grad_clip > 0:
            nn.utils.clip_grad_norm_(policy.parameters(), self.hparams.grad_clip)
        self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return {"policy_loss": loss.detach(), "learning_rate": lr}

    # -- acting ---------------------------------------------------------------------------------
    def reset_episode(self) -> None:
        """A new evaluation episode: empty context, return-to-go back to the target return."""
        self.policy.reset_context(1)

    def observe_reward(self, reward: float) -> None:
        """Decrement the return-to-go by the reward the last action earned."""
        self.policy.observe_reward(reward)

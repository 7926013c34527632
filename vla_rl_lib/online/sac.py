"""Soft Actor-Critic (Haarnoja et al. 2018, "SAC v2" with automatic entropy tuning).

SAC maximises the entropy-regularised return ``E[sum_t gamma^t (r_t + alpha * H(pi(.|s_t)))]``
off-policy, from a replay buffer:

* twin soft Q-functions ``Q_1, Q_2`` (one batched ``QEnsemble``) with Polyak-averaged target
  copies ``Q'_i <- tau * Q_i + (1 - tau) * Q'_i``;
* a tanh-squashed Gaussian policy trained through the reparameterisation trick;
* a temperature ``alpha`` tuned so the policy's entropy stays near ``target_entropy = -|A|``
  (``alpha="auto"``), or a fixed ``alpha``.

One update (the order Stable-Baselines3 uses; one policy sample serves the temperature and actor
losses):

1. draw a batch ``(s, a, r, s', d)`` uniformly from the replay buffer;
2. sample ``a~ ~ pi(.|s)`` with ``log pi(a~|s)``; temperature step on :func:`sac_temperature_loss`;
3. critic step on :func:`sac_critic_loss` against :func:`sac_critic_target`, computed with
   ``a' ~ pi(.|s')`` and the target critics;
4. actor step on :func:`sac_actor_loss` (the critics' weights get no gradient);
5. Polyak update of the target critics.

Environment interaction: ``learning_starts`` uniformly random actions first, then the policy's
stochastic actions; ``gradient_steps`` updates after every vector step once more than
``learning_starts`` environment steps were taken. Time-limit truncation is not termination:
the target bootstraps through ``(1 - terminal)``, and the ``next_observation`` stored for a
finished episode is the real final observation (``infos["final_obs"]``), not the next reset.

Read beside CleanRL's ``sac_continuous_action.py`` and Stable-Baselines3's ``sac.py``.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from vla_rl_lib import compat
from vla_rl_lib.config import ConfigBase, RLConfig, hp
from vla_rl_lib.errors import ConfigError, IncompatibleError
from vla_rl_lib.losses import critic_loss, soft_update
from vla_rl_lib.nets import QEnsemble, TanhGaussianPolicy, adam
from vla_rl_lib.online.replay import ReplayBuffer
from vla_rl_lib.trainer import OnlineTrainer

__all__ = ["SACTrainer", "SACHyperparameters", "sac_critic_target", "sac_critic_loss", "sac_actor_loss",
           "sac_temperature_loss"]


# ----------------------------------------------------------------------------------------------
# the losses
# ----------------------------------------------------------------------------------------------
def sac_critic_target(rewards: torch.Tensor, terminals: torch.Tensor, next_q: torch.Tensor,
                      next_log_pi: torch.Tensor, alpha, gamma: float) -> torch.Tensor:
    """Soft Bellman target (no gradient flows through it)::

        y = r + gamma * (1 - d) * ( min_i Q'_i(s', a') - alpha * log pi(a'|s') ),   a' ~ pi(.|s')

    ``next_q`` is already ``min_i Q'_i(s', a')`` (shape (B,)); ``d`` is 1 only for a real terminal
    state, so a time-limit truncation still bootstraps.
    """
    return rewards + gamma * (1.0 - terminals) * (next_q - alpha * next_log_pi)


def sac_critic_loss(q_values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Twin-Q regression, as Stable-Baselines3 writes it (the shared :func:`~vla_rl_lib.losses.critic_loss`
    with its factor 1/2)::

        L_Q = 1/2 * sum_i mean_batch( (Q_i(s, a) - y)^2 )

    ``q_values`` is (n_critics, B); ``target`` is (B,) and is treated as a constant.
    """
    return critic_loss(q_values, target, scale=0.5)


def sac_actor_loss(log_pi: torch.Tensor, q_pi: torch.Tensor, alpha) -> torch.Tensor:
    """Policy loss through the reparameterised sample ``a~ = tanh(mu + sigma * eps)``::

        L_pi = mean_batch( alpha * log pi(a~|s) - min_i Q_i(s, a~) )
    """
    return (alpha * log_pi - q_pi).mean()


def sac_temperature_loss(log_alpha: torch.Tensor, log_pi: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """Automatic entropy tuning (the form Stable-Baselines3 and CleanRL's v2 use, on ``log alpha``)::

        L_alpha = - mean_batch( log_alpha * (log pi(a~|s) + H_target) )     (the bracket is a constant)

    When the policy's entropy ``-log pi`` falls below ``H_target`` the bracket is positive and the
    gradient step raises ``alpha``; above it, ``alpha`` falls.
    """
    return -(log_alpha * (log_pi + target_entropy).detach()).mean()


# ----------------------------------------------------------------------------------------------
# hyperparameters that are not RLConfig fields
# ----------------------------------------------------------------------------------------------
@dataclass
class SACHyperparameters(ConfigBase):
    target_entropy: Optional[float] = hp(None, "entropy target of alpha='auto' (None: -action_dim)", nullable=True)
    initial_alpha: float = hp(1.0, "starting temperature when alpha='auto'", low=0, low_open=True)


class _RecordReset(gym.Wrapper):
    """Remembers how the last episode began (its reset seed, or the env RNG state before an unseeded
    reset) so a resumed trainer can restart the same episode. Changes nothing else."""

    def __init__(self, env):
        super().__init__(env)
        self.last_reset: dict = {}

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.last_reset = {"seed": int(seed)}
        else:
            rng = compat.env_rng_if_seeded(self.env)
            self.last_reset = {"rng": copy.deepcopy(rng.bit_generator.state)} if rng is not None else {}
        return self.env.reset(seed=seed, options=options)


# ----------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------
def host_array(value, dtype) -> np.ndarray:
    """A numpy array of ``value``: tensors (on any device) are copied explicitly, never through ``np.asarray``."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().astype(dtype, copy=False)
    return np.asarray(value, dtype=dtype)


class SACTrainer(OnlineTrainer):
    """Soft Actor-Critic on gymnasium environments with continuous (Box) actions.

    ``SACTrainer(env="Pendulum-v1", config=RLConfig(algorithm="sac", total_timesteps=20_000,
    learning_starts=1000, alpha="auto"))``; ``policy=`` takes a :class:`TanhGaussianPolicy` (for
    example CQL's) to fine-tune in place. ``trainer.replay_buffer`` is the
    :class:`~vla_rl_lib.online.replay.ReplayBuffer` (D4RL layout).
    """

    algorithm = "sac"
    compile_retains_graphs = True  # compiled, its critic and actor losses share one forward (compile.py)
    Hyperparameters = SACHyperparameters
    _checkpoint_exclude = ("_given_policy", "critic_params")

    def __init__(self, env=None, config: Optional[RLConfig] = None, policy: Optional[nn.Module] = None,
                 callbacks: Optional[Iterable] = None, use_wandb: bool = False, progress_bar: bool = False,
                 **hparams):
        if config is None:
            config = RLConfig(algorithm="sac")
        elif isinstance(config, RLConfig) and config.algorithm != "sac":
            # batch_size / hidden_dim left at None resolve to SAC's values, not PPO's
            config = RLConfig.from_dict({**config.to_dict(), "algorithm": "sac",
                                         **{k: None for k in ("batch_size", "hidden_dim")
                                            if getattr(config, k) == RLConfig._ALGO_DEFAULTS[config.algorithm][k]}})
        super().__init__(env, config, policy, callbacks, use_wandb, progress_bar, **hparams)
        cfg = self.config
        if not isinstance(self.action_space, gym.spaces.Box):
            raise IncompatibleError(f"SAC needs a continuous (Box) action space; {self.env_id or 'this env'} has "
                                    f"{self.action_space}; use PPO for discrete")
        if not isinstance(self.observation_space, gym.spaces.Box) or len(self.observation_space.shape) != 1:
            raise IncompatibleError(f"SAC here needs a flat Box observation space, got {self.observation_space}; "
                                    "wrap the env with gymnasium.wrappers.FlattenObservation")
        self._use_same_step_envs(env)
        obs_dim = int(self.observation_space.shape[0])
        act_dim = int(np.prod(self.action_space.shape))
        low = self.action_space.low.astype(np.float32).reshape(-1)
        high = self.action_space.high.astype(np.float32).reshape(-1)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise IncompatibleError("SAC's tanh policy needs finite action bounds; this env's Box is unbounded "
                                    "(wrap it with gymnasium.wrappers.RescaleAction or ClipAction)")
        hidden = (cfg.hidden_dim, cfg.hidden_dim)

        # -- policy: a new one, or the one handed over (fine-tuned in place) --------------------
        if policy is None:
            policy = TanhGaussianPolicy(obs_dim, act_dim, hidden, action_low=low, action_high=high)
        else:
            self._check_policy(policy, obs_dim, act_dim, low, high)
        self.policy = policy.to(self.device)

        # -- twin critics and their targets ------------------------------------------------------
        self.critic = QEnsemble(obs_dim, act_dim, hidden, n=2).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.critic_params = list(self.critic.parameters())
        lr = cfg.learning_rate
        self.actor_optimizer = adam(self.policy.parameters(), lr)
        self.critic_optimizer = adam(self.critic.parameters(), lr)

        # -- temperature -------------------------------------------------------------------------
        self.auto_alpha = cfg.alpha == "auto"
        if self.auto_alpha and cfg.compile:
            raise ConfigError("RLConfig(compile=True) with alpha='auto' is not supported: compiled, the temperature's "
                              "and the actor's backward passes share one graph and the losses drift from the eager "
                              "update's; use a fixed alpha (e.g. alpha=0.2) with compile=True, or compile=False")
        if self.auto_alpha:
            self.target_entropy = float(-act_dim if self.hparams.target_entropy is None else self.hparams.target_entropy)
            self.log_alpha = torch.tensor(float(np.log(self.hparams.initial_alpha)), device=self.device,
                                          requires_grad=True)
            self.alpha_optimizer = adam([self.log_alpha], lr)
        else:
            self.target_entropy = None
            self.log_alpha = None
            self._alpha = torch.tensor(float(cfg.alpha), device=self.device)

        # -- replay buffer and interaction state -------------------------------------------------
        self.replay_buffer = ReplayBuffer(cfg.buffer_size, obs_dim, act_dim)
        self.sample_generator = torch.Generator().manual_seed(cfg.seed)
        self.action_rng = np.random.default_rng(cfg.seed)
        self._low, self._high = low, high
        self._act_shape = (self.num_envs, *self.action_space.shape)
        self._obs: Optional[np.ndarray] = None
        self._skip = np.zeros(self.num_envs, dtype=bool)  # NEXT_STEP envs: the step after a done is a reset
        self._min_rows = 1
        # the critics see the same normalised observations as the policy (identity unless handed a
        # policy with dataset statistics, e.g. from CQL)
        self._normalize = not (torch.all(self.policy.obs_mean == 0) and torch.all(self.policy.obs_std == 1))
        self._on_cpu = self.device.type == "cpu"

    # ------------------------------------------------------------------------------------------
    # construction helpers
    # ------------------------------------------------------------------------------------------
    def _use_same_step_envs(self, env) -> None:
        """Rebuild the vector env with same-step autoreset where the trainer builds it.

        With ``AutoresetMode.SAME_STEP`` every ``step()`` is a real transition and the finished
        episode's last observation arrives in ``infos["final_obs"]``. A vector env handed in by the
        user is kept as it is (NEXT_STEP is handled by skipping the reset step).
        """
        from vla_rl_lib.envs import make_env

        if isinstance(env, gym.vector.VectorEnv):
            mode = self.envs.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
            if mode not in (gym.vector.AutoresetMode.SAME_STEP, gym.vector.AutoresetMode.NEXT_STEP):
                raise IncompatibleError(f"SAC needs a vector env that resets itself (autoreset_mode SAME_STEP or "
                                        f"NEXT_STEP), got {mode}")
            self._autoreset = mode
            return
        if isinstance(env, gym.Env) and self.num_envs == 1:
            fns = [lambda: _RecordReset(env)]
        else:  # an id (or an env with a spec and num_envs > 1): build our own copies
            name = self.env_id if env is None or not isinstance(env, str) else env
            fns = [lambda: _RecordReset(make_env(name)) for _ in range(self.num_envs)]
            self.envs.close()
        self.envs = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self._autoreset = gym.vector.AutoresetMode.SAME_STEP

    def _check_policy(self, policy, obs_dim, act_dim, low, high) -> None:
        if getattr(policy, "discrete", False):
            raise IncompatibleError("SAC needs a continuous policy; the given policy is discrete. Use PPO for discrete")
        if not isinstance(policy, TanhGaussianPolicy):
            raise IncompatibleError(f"SAC fine-tunes a TanhGaussianPolicy (as CQL's), got {type(policy).__name__}; "
                                    "SAC's update needs reparameterised tanh-Gaussian samples. Fine-tune other "
                                    "policies (IQL's GaussianPolicy, TD3+BC's DeterministicPolicy) with PPO")
        if policy.action_dim != act_dim or policy.obs_dim != obs_dim:
            raise IncompatibleError(f"the policy maps observations of size {policy.obs_dim} to actions of size "
                                    f"{policy.action_dim}, but {self.env_id or 'the env'} has observations of size "
                                    f"{obs_dim} and actions of size {act_dim}")
        p_low, p_high = policy.action_low.cpu().numpy(), policy.action_high.cpu().numpy()
        if not (np.allclose(p_low, low, atol=1e-5) and np.allclose(p_high, high, atol=1e-5)):
            raise IncompatibleError(f"the policy acts in bounds [{p_low.tolist()}, {p_high.tolist()}] but "
                                    f"{self.env_id or 'the env'} expects [{low.tolist()}, {high.tolist()}]; build "
                                    "the policy with the env's action_low/action_high")

    @property
    def alpha(self) -> torch.Tensor:
        """The current temperature (a tensor without gradient)."""
        return self.log_alpha.detach().exp() if self.auto_alpha else self._alpha

    # ------------------------------------------------------------------------------------------
    # interaction
    # ------------------------------------------------------------------------------------------
    def _reset_envs(self) -> None:
        obs, _ = self.envs.reset(seed=self.config.seed)
        self._obs = host_array(obs, np.float32)
        self._skip[:] = False

    @torch.no_grad()
    def _act(self, obs: np.ndarray) -> np.ndarray:
        """Stochastic policy actions for the vector env (random before ``learning_starts``)."""
        if self.global_step < self.config.learning_starts:
            return self.action_rng.uniform(self._low, self._high, size=(self.num_envs, self._low.size)) \
                .astype(np.float32).reshape(self._act_shape)
        x = torch.from_numpy(obs)
        if not self._on_cpu:
            x = x.to(self.device)
        policy = self.policy
        mean, log_std = policy._mean_log_std(x)  # the sample() path without its log-probability
        unit = torch.tanh(mean + log_std.exp() * torch.randn_like(mean))
        return policy.scale_action(unit).cpu().numpy().reshape(self._act_shape)

    def collect(self) -> int:
        """One vector step: act, step the envs, store the transitions, update episode stats."""
        if self._obs is None:
            self._reset_envs()
        obs = self._obs
        actions = self._act(obs)
        next_obs, rewards, terminated, truncated, infos = self.envs.step(actions)
        # SAC's replay buffer lives in host memory: an env returning tensors (on any device) is
        # copied over here, once per step and explicitly
        next_obs, rewards = host_array(next_obs, np.float32), host_array(rewards, np.float32)
        terminated, truncated = host_array(terminated, bool), host_array(truncated, bool)
        dones = terminated | truncated
        flat_actions = actions.reshape(self.num_envs, -1)
        if self._autoreset is gym.vector.AutoresetMode.SAME_STEP:
            real_next = next_obs
            if dones.any():  # the finished episodes' last observations; next_obs holds the resets
                real_next = next_obs.copy()
                final = infos["final_obs"]
                for i in np.flatnonzero(host_array(infos.get("_final_obs", dones), bool)):
                    real_next[i] = host_array(final[i], np.float32)
            self.replay_buffer.add(obs, flat_actions, rewards, real_next, terminated, truncated & ~terminated)
            self.record_step(rewards, dones)
            taken = self.num_envs
        else:  # NEXT_STEP: this step's output for envs that finished last step is only their reset
            keep = ~self._skip
            if keep.all():
                self.replay_buffer.add(obs, flat_actions, rewards, next_obs, terminated, truncated & ~terminated)
            else:
                self.replay_buffer.add(obs[keep], flat_actions[keep], rewards[keep], next_obs[keep],
                                       terminated[keep], (truncated & ~terminated)[keep])
            self._episode_returns[~keep] = 0.0
            self._episode_lengths[~keep] = -1
            self.record_step(np.where(keep, rewards, 0.0), dones & keep)
            self._skip = dones & keep
            taken = int(keep.sum())
        self._obs = next_obs
        return taken

    # ------------------------------------------------------------------------------------------
    # learning
    # ------------------------------------------------------------------------------------------
    def learn(self) -> dict:
        """``gradient_steps`` updates once more than ``learning_starts`` env steps were taken."""
        if self.global_step <= self.config.learning_starts or self.replay_buffer.size < self._min_rows:
            return {}
        metrics, update = None, self.update_function()
        for _ in range(self.config.gradient_steps):
            batch = self.replay_buffer.sample(self.config.batch_size, generator=self.sample_generator)
            metrics = update(batch)
        return metrics

    def update(self, batch: dict) -> dict:
        """One SAC gradient step on a batch (see the module docstring); returns tensor metrics."""
        if not self._on_cpu:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        obs, next_obs = batch["observations"], batch["next_observations"]
        policy, critic = self.policy, self.critic
        actions = policy.unscale_action(batch["actions"])  # the critics see actions in [-1, 1]
        obs_c = policy.normalize(obs) if self._normalize else obs
        next_c = policy.normalize(next_obs) if self._normalize else next_obs

        # (2) one reparameterised sample for the temperature and the actor
        pi, log_pi = policy.sample(obs)
        metrics = {}
        if self.auto_alpha:
            alpha = self.log_alpha.detach().exp()  # this step's critic and actor use alpha before its update
            alpha_loss = sac_temperature_loss(self.log_alpha, log_pi, self.target_entropy)
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
            metrics["alpha_loss"] = alpha_loss.detach()
        else:
            alpha = self._alpha

        # (3) critics
        with torch.no_grad():
            next_pi, next_log_pi = policy.sample(next_obs)
            next_q = self.critic_target(next_c, next_pi).min(dim=0).values
            target = sac_critic_target(batch["rewards"], batch["terminals"], next_q, next_log_pi, alpha,
                                       self.config.discount_gamma)
        q = critic(obs_c, actions)
        q_loss = sac_critic_loss(q, target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        q_loss.backward()
        self.critic_optimizer.step()

        # (4) actor: gradients reach the policy through a~ only, not the critics' weights
        for p in self.critic_params:
            p.requires_grad_(False)
        q_pi = critic(obs_c, pi).min(dim=0).values
        actor_loss = sac_actor_loss(log_pi, q_pi, alpha)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        for p in self.critic_params:
            p.requires_grad_(True)

        # (5) targets
        soft_update(self.critic_target, critic, self.config.tau)

        q_loss = q_loss.detach()
        metrics.update(q_loss=q_loss, value_loss=q_loss, policy_loss=actor_loss.detach(), alpha=alpha,
                       entropy=-log_pi.detach(), q_mean=q.detach())
        return metrics

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        state = {"replay_buffer": self.replay_buffer.state(self.config.save_replay_buffer),
                 "episode_returns": torch.as_tensor(self._episode_returns),
                 "episode_lengths": torch.as_tensor(self._episode_lengths)}
        if self.auto_alpha:
            state["log_alpha"] = self.log_alpha.detach().clone()
        resets = [getattr(e, "last_reset", None) for e in getattr(self.envs, "envs", [])]
        if self._obs is not None and resets and all(r for r in resets):
            state["env_resets"] = resets
        return state

    def load_extra_state(self, state: dict) -> None:
        """Restore alpha, the replay buffer (or its emptiness), episode counters and the envs.

        The envs cannot be saved in general. Each env restarts the episode it was in by repeating
        that episode's reset (same seed, or same RNG state); a checkpoint taken at an episode
        boundary (``total_timesteps`` a multiple of the episode length, as in the tests) therefore
        continues exactly as the uninterrupted run. An env that was mid-episode restarts that episode.
        """
        if self.auto_alpha and "log_alpha" in state:
            with torch.no_grad():
                self.log_alpha.copy_(state["log_alpha"].to(self.device))
        if "replay_buffer" in state and not self.replay_buffer.load_state(state["replay_buffer"]):
            if int(state["replay_buffer"].get("size", 0)) > 0:
                warnings.warn(f"the checkpoint holds no replay buffer (save_replay_buffer=False); SAC refills an "
                              f"empty buffer and resumes updates once it holds batch_size={self.config.batch_size} "
                              "transitions. Save with RLConfig(save_replay_buffer=True) for an exact resume.",
                              stacklevel=3)
                self._min_rows = self.config.batch_size
        lengths = state.get("episode_lengths")
        resets = state.get("env_resets")
        if resets is not None and len(resets) == self.num_envs and hasattr(self.envs, "envs"):
            obs = []
            for sub, how in zip(self.envs.envs, resets):
                if "seed" in how:
                    o, _ = sub.reset(seed=how["seed"])
                else:
                    sub.unwrapped.np_random.bit_generator.state = how["rng"]
                    o, _ = sub.reset()
                obs.append(o)
            # keep the vector env's own bookkeeping consistent (no pending autoreset)
            if isinstance(self.envs, gym.vector.SyncVectorEnv):
                compat.set_vector_autoreset_flags(self.envs, np.zeros(self.num_envs, dtype=bool))
            self._obs = np.asarray(np.stack(obs), dtype=np.float32)
            self._skip[:] = False
        else:
            self._obs = None
        if lengths is not None:
            returns = state["episode_returns"].numpy()
            lengths = lengths.numpy()
            mid = lengths != 0  # those episodes restart: their partial statistics are dropped
            self._episode_returns = np.where(mid, 0.0, returns)
            self._episode_lengths = np.where(mid, 0, lengths)

"""Shared machinery of the on-policy methods (PPO, GRPO): observations, rollouts, GAE, normalisers.

* ``stack_obs`` / ``concat_obs`` / ``index_obs`` / ``slice_obs`` / ``obs_to_tensor``: observations are numpy arrays,
  tensors or dicts of them (the driving simulator's ``{"image", "instruction", "state"}``) whose string
  entries stay lists of strings (or :class:`~vla_rl_lib.envs.text.IndexedText`, indices into a few
  texts, which stay on the device); the policy receives batched tensors (and texts) and batches
  them its own way.
* An env that returns torch tensors (``holds_tensors``) keeps the whole rollout on its device:
  it is stepped with tensors, and rewards, flags, episode statistics (``EpisodeStats``) and the
  running normalisers never go through numpy.
* ``VectorRollout``: steps a vector env with the policy and fills a ``RolloutBuffer`` (one PPO
  rollout of ``rollout_steps x num_envs`` transitions, with the masks that gymnasium 1.x autoreset
  needs, and ``V(s_{t+1})`` for the GAE); ``RolloutBuffer.transitions`` flattens it and
  ``minibatches`` cuts it into shuffled minibatches for the epochs of an update.
* ``compute_gae``: generalised advantage estimation that bootstraps on truncation, not on termination.
* ``RunningMeanStd`` / ``RewardScaler``: running statistics kept in ``nn.Module`` buffers so a
  checkpoint carries them.
* ``check_policy`` / ``as_stochastic`` / ``default_policy``: make sure a given policy fits the
  environment's spaces and can give action likelihoods.

Gymnasium 1.x vector autoreset
------------------------------
With ``AutoresetMode.NEXT_STEP`` (gymnasium's default) the step that ends an episode returns the
episode's true final observation, and the *next* ``step()`` of that sub-env ignores its action and
returns the reset observation with reward 0. That reset step is not a transition: ``RolloutBuffer``
marks it invalid and the learner leaves it out. With ``AutoresetMode.SAME_STEP`` the ending step
already returns the reset observation and the true final one is in ``infos["final_obs"]``; the
trainer evaluates ``V`` on it to bootstrap truncated episodes.
"""
from __future__ import annotations

import copy
import functools
from typing import Any, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Normal

from vla_rl_lib.envs.state import as_checkpoint_value, from_checkpoint_value, get_env_state, restore_env_state
from vla_rl_lib.envs.text import IndexedText
from vla_rl_lib.errors import ConfigError, IncompatibleError
from vla_rl_lib.nets import LOG_STD_MIN, LOG_STD_MAX, CategoricalPolicy, DistributionPolicy, GaussianPolicy, Policy, adam

Obs = Any  # np.ndarray (B, ...) or dict[str, np.ndarray | list[str]]


# ------------------------------------------------------------------------------------------------
# observations
# ------------------------------------------------------------------------------------------------
def _is_text(value) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, (list, tuple)):
        return len(value) > 0 and isinstance(value[0], str)
    return isinstance(value, np.ndarray) and value.dtype.kind in "USO" and value.size > 0 and isinstance(
        value.flat[0], str)


def stack_obs(observations: Sequence[Obs]) -> Obs:
    """Batch a list of single observations: arrays -> ``(B, ...)``, dicts key by key, strings -> list."""
    first = observations[0]
    if isinstance(first, dict):
        return {k: stack_obs([o[k] for o in observations]) for k in first}
    if isinstance(first, str):
        return [str(o) for o in observations]
    return np.stack([np.asarray(o) for o in observations])


def concat_obs(batches: Sequence[Obs]) -> Obs:
    """Concatenate batched observations along the batch axis (time-major flattening of a rollout)."""
    first = batches[0]
    if isinstance(first, dict):
        return {k: concat_obs([b[k] for b in batches]) for k in first}
    if isinstance(first, IndexedText):
        return IndexedText.concat(batches)
    if _is_text(first):
        return [str(s) for b in batches for s in b]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(batches))
    return np.concatenate([np.asarray(b) for b in batches])


def index_obs(obs: Obs, idx) -> Obs:
    """``obs[idx]`` for arrays, tensors, dicts of them and lists of strings."""
    if isinstance(obs, dict):
        return {k: index_obs(v, idx) for k, v in obs.items()}
    if isinstance(obs, (list, tuple)):
        idx = idx.tolist() if hasattr(idx, "tolist") else idx
        return [obs[i] for i in idx]
    if isinstance(obs, torch.Tensor) and not isinstance(idx, torch.Tensor):
        idx = torch.as_tensor(idx, device=obs.device)
    return obs[idx]


def slice_obs(obs: Obs, start: int, stop: int) -> Obs:
    """Rows ``start:stop`` of a batch of observations (a view for arrays and tensors)."""
    if isinstance(obs, dict):
        return {k: slice_obs(v, start, stop) for k, v in obs.items()}
    return obs[start:stop]


def final_observations(infos: dict, idx) -> Obs:
    """True final observations of the envs ``idx`` (a list, array or tensor of indices) from a
    SAME_STEP vector env's ``infos["final_obs"]``: an object array of per-env observations
    (gymnasium's vector envs) or a dict of batched arrays or tensors (the kit's batched driving simulator)."""
    final = infos["final_obs"]
    if isinstance(final, dict) and holds_tensors(final):
        return index_obs(final, idx if isinstance(idx, torch.Tensor) else torch.as_tensor(idx))
    idx = idx.tolist() if isinstance(idx, torch.Tensor) else idx
    if isinstance(final, dict):
        return index_obs(final, np.asarray(idx, dtype=np.int64))
    return stack_obs([final[i] for i in idx])


def holds_tensors(obs: Obs) -> bool:
    """Whether an observation (or a dict of them) is made of torch tensors: the env runs in torch
    (e.g. ``BatchedDrivingEnv(return_tensors="torch")``) and the rollout stays on its device."""
    if isinstance(obs, dict):
        return any(holds_tensors(v) for v in obs.values())
    return isinstance(obs, torch.Tensor)


def to_device(value, device, dtype: torch.dtype) -> torch.Tensor:
    """A step's rewards or flags as a tensor on ``device``: a tensor is moved (no host copy),
    a numpy array or list is copied once."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(value), device=device).to(dtype)


def obs_to_tensor(obs: Obs, device) -> Obs:
    """Numpy -> torch on ``device`` (float64 -> float32, uint8 images kept); strings stay a list."""
    if isinstance(obs, np.ndarray) and obs.dtype in (np.float32, np.uint8):  # the common case, first
        return torch.as_tensor(obs, device=device)
    if isinstance(obs, dict):
        return {k: obs_to_tensor(v, device) for k, v in obs.items()}
    if isinstance(obs, IndexedText):  # instructions as indices: moved with the tensors
        return obs.to(device)
    if _is_text(obs):
        return [str(s) for s in (obs if not isinstance(obs, str) else [obs])]
    if isinstance(obs, torch.Tensor):
        return obs.to(device)
    arr = np.asarray(obs)
    if arr.dtype == np.float64 or arr.dtype.kind in "ib" and arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
    return torch.as_tensor(arr, device=device)


def same_obs(a: Obs, b: Obs) -> bool:
    """Whether two observations are equal (used to check that ``reset(seed=s)`` is reproducible)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_obs(a[k], b[k]) for k in a)
    if isinstance(a, IndexedText) or isinstance(b, IndexedText):
        return list(a) == list(b)
    if _is_text(a):
        return list(np.atleast_1d(a)) == list(np.atleast_1d(b))
    return np.array_equal(np.asarray(a), np.asarray(b))


def autoreset_mode(envs) -> str:
    """``"same_step"`` or ``"next_step"`` (gymnasium's default, assumed when a vector env does not say)."""
    mode = getattr(envs, "metadata", {}).get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP)
    mode = getattr(mode, "value", mode)
    mode = str(mode).lower().replace("_", "")
    if mode == "samestep":
        return "same_step"
    if mode == "nextstep":
        return "next_step"
    raise IncompatibleError(f"vector env autoreset mode {mode!r} is not supported; use AutoresetMode.NEXT_STEP "
                            "or AutoresetMode.SAME_STEP")


def rollout_envs(envs, given, env_id, make_env):
    """The vector env PPO collects from, when the trainer built it (from an id, or around one env
    instance); a vector env the user passed in is kept as it is (both autoreset modes are handled).

    * An id whose gymnasium registration has a vector entry point in the same module as its env
      (CartPole-v1's numpy-batched ``CartPoleVectorEnv``: the same dynamics and time limit, all
      copies stepped in one call) and no additional wrappers is made with
      ``gym.make_vec(id, num_envs, vectorization_mode="vector_entry_point")``. It resets with
      ``AutoresetMode.NEXT_STEP``, which the rollout handles (the reset steps are not transitions).
    * Otherwise the ``SyncVectorEnv`` is rebuilt with ``AutoresetMode.SAME_STEP``, so no step is
      spent on NEXT_STEP's reset steps.
    """
    if isinstance(given, gym.vector.VectorEnv) or not isinstance(envs, gym.vector.SyncVectorEnv):
        return envs
    n = envs.num_envs
    if not isinstance(given, gym.Env) and env_id is not None:
        batched = batched_vector_env(env_id, n)
        if batched is not None:
            envs.close()
            return batched
    if autoreset_mode(envs) == "same_step":
        return envs
    if isinstance(given, gym.Env) and n == 1:
        fns = [lambda: given]  # the same instance (its constructor arguments are kept)
    elif env_id is not None:
        envs.close()
        fns = [functools.partial(make_env, env_id) for _ in range(n)]
    else:
        return envs
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def batched_vector_env(env_id: str, num_envs: int):
    """``gym.make_vec(env_id, num_envs, vectorization_mode="vector_entry_point")`` when the id's
    vector entry point is the batched twin of its env (defined in the same module, e.g.
    ``cartpole:CartPoleEnv`` / ``cartpole:CartPoleVectorEnv``; the time limit comes from the same
    registration) and the registration adds no wrappers; else None. An entry point whose own
    dependencies are missing (gymnasium's jax ``phys2d`` envs) gives None too."""
    spec = gym.registry.get(env_id) if isinstance(env_id, str) else None
    if spec is None or not isinstance(spec.vector_entry_point, str) or not isinstance(spec.entry_point, str):
        return None
    if spec.additional_wrappers or spec.vector_entry_point.split(":")[0] != spec.entry_point.split(":")[0]:
        return None
    try:
        envs = gym.make_vec(env_id, num_envs=int(num_envs), vectorization_mode="vector_entry_point")
    except (ImportError, gym.error.Error):
        return None
    autoreset_mode(envs)  # a mode the rollout cannot handle raises here
    return envs


def make_adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam with ``eps=1e-5`` (the PPO implementation detail), fused where torch supports it."""
    return adam(params, lr, eps=1e-5)


# ------------------------------------------------------------------------------------------------
# advantages
# ------------------------------------------------------------------------------------------------
def compute_gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                terminations: torch.Tensor, dones: torch.Tensor, gamma: float, gae_lambda: float):
    """Generalised advantage estimation over a rollout of shape ``(T, N)``.

    For each step ``t`` of each environment::

        delta_t = r_t + gamma * V(s_{t+1}) * (1 - term_t) - V(s_t)
        A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}
        R_t     = A_t + V(s_t)                                  (the value target)

    ``next_values[t] = V(s_{t+1})`` is the value of the *true* next observation: for an episode cut
    by its time limit (truncated, ``done_t = 1``, ``term_t = 0``) that is the final observation, so
    the return is bootstrapped; for a terminal state (``term_t = 1``) nothing is bootstrapped.
    ``done_t = term_t or trunc_t`` stops the recursion at every episode end.
    Returns ``(advantages, returns)``, both ``(T, N)``.
    """
    not_term = 1.0 - terminations.to(rewards.dtype)
    decay = (1.0 - dones.to(rewards.dtype)) * (gamma * gae_lambda)  # gamma * lambda * (1 - done_t)
    deltas = rewards + gamma * next_values * not_term - values
    advantages = torch.empty_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        last = torch.addcmul(deltas[t], decay[t], last, out=advantages[t])  # delta_t + decay_t * A_{t+1}
    return advantages, advantages + values


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """``1 - Var[target - predicted] / Var[target]`` (1: perfect value function, 0: no better than a
    constant; reported as 0 when the targets have no variance)."""
    var = target.var()
    if not var.item() > 0:
        return 0.0
    return float(1.0 - (target - predicted).var() / var)


# ------------------------------------------------------------------------------------------------
# rollout storage
# ------------------------------------------------------------------------------------------------
class RolloutBuffer:
    """One on-policy rollout: ``steps x num_envs`` transitions (observations may be dicts).

    ``valid[t, i]`` is False for the gymnasium NEXT_STEP autoreset steps (not transitions).
    ``next_values[t, i]`` holds ``V(s_{t+1})`` for the GAE (see :func:`compute_gae`).
    Tensor observations are copied into one ``(steps, num_envs, ...)`` tensor allocated at the
    first ``add``; other observations (dicts, strings) are kept as a list, one batch per step.
    """

    def __init__(self, steps: int, num_envs: int, action_shape: tuple, discrete: bool, device):
        self.steps, self.num_envs, self.device = int(steps), int(num_envs), device
        t, n = self.steps, self.num_envs
        self.obs: list[Obs] | torch.Tensor = []
        self._obs_storage: torch.Tensor | None = None
        act_dtype = torch.long if discrete else torch.float32
        self.actions = torch.zeros((t, n, *action_shape), dtype=act_dtype, device=device)
        self.log_probs = torch.zeros((t, n), device=device)
        self.values = torch.zeros((t, n), device=device)
        self.next_values = torch.zeros((t, n), device=device)
        self.rewards = torch.zeros((t, n), device=device)
        self.terminations = torch.zeros((t, n), device=device)
        self.dones = torch.zeros((t, n), device=device)
        self.valid = torch.ones((t, n), dtype=torch.bool, device=device)
        self._steps: list[tuple] = []
        self.pos = 0

    def reset(self) -> None:
        self.obs = [] if self._obs_storage is None else self._obs_storage
        self.valid.fill_(True)
        self.next_values.zero_()
        self._steps = []
        self.pos = 0

    def _store_obs(self, t: int, obs: Obs) -> None:
        if isinstance(obs, torch.Tensor):
            storage = self._obs_storage
            if storage is None and t == 0:
                with torch.inference_mode(False):  # a normal tensor, even when the rollout runs in inference mode
                    storage = torch.empty((self.steps, *obs.shape), dtype=obs.dtype, device=obs.device)
                self._obs_storage = self.obs = storage
            if storage is not None and storage.shape[1:] == obs.shape and storage.dtype == obs.dtype:
                storage[t].copy_(obs)
                return
            if storage is not None:  # the observations changed shape: keep them as a list from now on
                self._obs_storage = None
                self.obs = [storage[i].clone() for i in range(t)]
        self.obs.append(obs)

    def add(self, obs: Obs, actions, log_probs, values, rewards, terminations, dones, valid) -> None:
        """Store step ``t``: every argument a tensor on the rollout's device (no host copy)."""
        t = self.pos
        self._store_obs(t, obs)
        self._steps.append((actions, log_probs, values))  # stacked into the tensors by finish()
        self.rewards[t] = rewards
        self.terminations[t] = terminations
        self.dones[t] = dones
        self.valid[t] = valid
        self.pos += 1

    def finish(self) -> None:
        """Move the staged actions, log-probabilities and values into the rollout's tensors (call
        after the last ``add``)."""
        actions, log_probs, values = zip(*self._steps)
        t, n = self.pos, self.num_envs
        self.actions[:t] = torch.stack(actions).reshape(t, *self.actions.shape[1:])
        self.log_probs[:t] = torch.stack(log_probs).reshape(t, n)
        if values[0] is not None:  # (else the trainer fills them in after the rollout)
            self.values[:t] = torch.stack(values).reshape(t, n)
        self._steps = []

    def flat_obs(self) -> Obs:
        """All observations, time-major flattened to ``steps * num_envs`` rows (tensors on device)."""
        if isinstance(self.obs, torch.Tensor):
            return self.obs.reshape(self.steps * self.num_envs, *self.obs.shape[2:])
        first = self.obs[0]
        if isinstance(first, torch.Tensor):
            return torch.cat(self.obs)
        return concat_obs(self.obs)

    def transitions(self, advantages: torch.Tensor, returns: torch.Tensor) -> dict:
        """The rollout's transitions as flat rows ``{"obs", "actions", "old_log_probs", "old_values",
        "advantages", "returns"}``, time-major, with the NEXT_STEP reset steps (``valid`` False) left out."""
        n = self.steps * self.num_envs
        data = {"obs": self.flat_obs(), "actions": self.actions.reshape(n, *self.actions.shape[2:]),
                "old_log_probs": self.log_probs.reshape(n), "old_values": self.values.reshape(n),
                "advantages": advantages.reshape(n), "returns": returns.reshape(n)}
        valid = self.valid.reshape(n)
        if bool(valid.all()):
            return data
        keep = torch.nonzero(valid).squeeze(1)
        return {k: index_obs(v, keep) for k, v in data.items()}


def minibatches(data: dict, batch_size: int, epochs: int, generator: torch.Generator, normalize=None):
    """Yield the minibatches of ``epochs`` passes over ``data`` (the rows of
    :meth:`RolloutBuffer.transitions`), each pass in a new random order drawn from ``generator``.

    ``normalize`` (e.g. PPO's advantage normalisation) is applied to each minibatch's
    ``"advantages"`` when it has more than one row. When one minibatch holds every row (the zoo's
    CartPole settings), every epoch sees the same set: it is not shuffled (the loss is a mean, so
    order changes nothing) and its advantages are normalised once, not once per epoch.
    """
    size = len(data["advantages"])
    batch = min(batch_size, size)
    if batch >= size:
        if normalize is not None and size > 1:
            data = dict(data, advantages=normalize(data["advantages"]))
        for _ in range(epochs):
            yield data
        return
    for _ in range(epochs):
        order = torch.randperm(size, generator=generator).to(data["advantages"].device)
        shuffled = {k: index_obs(v, order) for k, v in data.items()}  # one gather per epoch; minibatches slice it
        for start in range(0, size, batch):
            mb = {k: slice_obs(v, start, start + batch) for k, v in shuffled.items()}
            if normalize is not None and mb["advantages"].numel() > 1:
                mb["advantages"] = normalize(mb["advantages"])
            yield mb


class VectorRollout:
    """Collects on-policy rollouts from a vector env into a :class:`RolloutBuffer`: the engineering
    under "run the policy for T steps in N envs" (PPO's step 1).

    * Both gymnasium 1.x autoreset modes (module docstring): with NEXT_STEP the step after an
      episode's end is a reset step, marked invalid (``after_done``) and ending nothing; with
      SAME_STEP an episode cut by its time limit bootstraps from ``V`` of ``infos["final_obs"]``.
    * ``V(s_{t+1})`` for the GAE in ``buffer.next_values``. With ``late_values`` (a critic that
      does not act, e.g. a separate ``ValueNetwork``), ``V(s_t)`` of the whole rollout is computed
      in one pass after it (the same network and parameters), not in one small pass per step.
    * Host/device plumbing: an env that returns tensors is stepped with tensors on the device (no
      host copy); a numpy env's rewards and flags are copied to the device once per step.
    * Running statistics on valid steps only: observation statistics (``obs_rms``), return-based
      reward scaling (``reward_scaler``) and the training episodes' returns and lengths.

    ``next_obs`` is None until :meth:`reset` (or after a checkpoint without the env's state):
    the next :meth:`collect` then starts fresh episodes.
    """

    def __init__(self, envs, device, action_space, obs_rms: Optional["RunningMeanStd"] = None,
                 reward_scaler: Optional["RewardScaler"] = None):
        self.envs, self.device = envs, device
        self.num_envs = envs.num_envs
        self.mode = autoreset_mode(envs)
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if isinstance(action_space, gym.spaces.Box):
            self._low, self._high = action_space.low, action_space.high
            self._low_t = torch.as_tensor(self._low, dtype=torch.float32, device=device)
            self._high_t = torch.as_tensor(self._high, dtype=torch.float32, device=device)
        self.obs_rms, self.reward_scaler = obs_rms, reward_scaler
        self.episodes = EpisodeStats(self.num_envs, device)
        self.next_obs: Obs = None
        self.tensor_env = False
        self.after_done = torch.zeros(self.num_envs, dtype=torch.bool, device=device)

    def reset(self, seed: int) -> None:
        """Start fresh episodes (``envs.reset(seed=seed)``)."""
        self.next_obs, _ = self.envs.reset(seed=seed)
        self.tensor_env = holds_tensors(self.next_obs)
        self.after_done = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)  # NEXT_STEP: next is a reset step
        self.episodes.reset()
        if self.reward_scaler is not None:
            self.reward_scaler.returns.zero_()

    def env_actions(self, actions: torch.Tensor):
        """The actions the env is stepped with, clipped to a Box: tensors on the device for an env
        that returns tensors (no host copy), else numpy."""
        if self.tensor_env:
            return actions.reshape(-1) if self.discrete else torch.clamp(actions, self._low_t, self._high_t)
        a = actions.cpu().numpy()
        if self.discrete:
            return a.reshape(-1).astype(np.int64)
        return np.clip(a, self._low, self._high)

    def collect(self, buffer: "RolloutBuffer", act, value, late_values: bool, seed: int) -> list:
        """Fill ``buffer`` with ``buffer.steps`` steps of every env; return the training episodes
        that ended, ``[(return, length), ...]``.

        ``act(obs, with_value) -> (actions, log_probs, values or None)`` samples the policy;
        ``value(obs) -> V(obs)``; ``seed`` resets the envs if they hold no episodes yet."""
        if self.next_obs is None:
            self.reset(seed)
        buffer.reset()
        final_values = torch.zeros_like(buffer.values)
        has_final = torch.zeros_like(buffer.valid)
        same_step = self.mode == "same_step"
        obs = self.next_obs
        for t in range(buffer.steps):
            obs_t = obs_to_tensor(obs, self.device)
            actions, log_probs, values = act(obs_t, not late_values)
            next_obs, rewards, terminated, truncated, infos = self.envs.step(self.env_actions(actions))
            rewards = to_device(rewards, self.device, torch.float32)
            terminated = to_device(terminated, self.device, torch.bool)
            truncated = to_device(truncated, self.device, torch.bool)
            dones = terminated | truncated
            valid = ~self.after_done
            if self.obs_rms is not None:
                self.obs_rms.update(obs_t, valid)
            self.episodes.step(rewards, dones, valid)  # reset steps are not transitions: no length
            train_rewards = rewards if self.reward_scaler is None else self.reward_scaler(rewards, dones, valid)
            if same_step:
                cut = truncated & ~terminated
                if bool(cut.any()):  # bootstrap from the true final observation (one sync per step)
                    cut = torch.nonzero(cut).squeeze(1)
                    final = final_observations(infos, cut)
                    final_values[t, cut] = value(obs_to_tensor(final, self.device))
                    has_final[t, cut] = True
            else:
                self.after_done = dones
                dones = dones | ~valid  # the reset step ends nothing that follows it
            buffer.add(obs_t, actions, log_probs, values, train_rewards, terminated & valid, dones, valid)
            obs = next_obs
        finished = self.episodes.finished()  # one host copy per rollout
        self.next_obs = obs
        buffer.finish()
        last_obs = obs_to_tensor(obs, self.device)
        if late_values:
            rollout_obs = buffer.flat_obs()
            values = value(torch.cat([rollout_obs, last_obs]))
            buffer.values.copy_(values[:len(rollout_obs)].reshape(buffer.values.shape))
            last_values = values[len(rollout_obs):]
        else:
            last_values = value(last_obs)
        buffer.next_values[:-1] = buffer.values[1:]
        buffer.next_values[-1] = last_values
        buffer.next_values = torch.where(has_final, final_values, buffer.next_values)
        return finished

    # -- checkpoints ---------------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """``{"env": ..., "rollout": ...}`` for a trainer's checkpoint: the environment's state
        (:mod:`vla_rl_lib.envs.state`: worlds, step counters, pending autoresets, generators) and the
        rollout's place in it, so a resumed run continues its episodes exactly; ``{}`` before the
        first reset or for an env whose state cannot be saved."""
        env = None if self.next_obs is None else get_env_state(self.envs)
        if env is None:
            return {}
        return {"env": env, "rollout": as_checkpoint_value(self.state())}

    def restore(self, checkpoint: dict, algorithm: str) -> None:
        """Put back what :meth:`checkpoint` saved; without it (or for another env) the next
        :meth:`collect` starts fresh episodes."""
        if not restore_env_state(self.envs, checkpoint.get("env"), algorithm):
            self.next_obs = None
            return
        self.load_state(from_checkpoint_value(checkpoint["rollout"]))

    def state(self) -> dict:
        return {"next_obs": self.next_obs, "after_done": self.after_done,
                "episode_returns": self.episodes.returns, "episode_lengths": self.episodes.lengths}

    def load_state(self, state: dict) -> None:
        self.next_obs = state["next_obs"]
        self.tensor_env = holds_tensors(self.next_obs)
        self.after_done = state["after_done"].to(self.device)
        self.episodes.returns.copy_(state["episode_returns"])
        self.episodes.lengths.copy_(state["episode_lengths"])


# ------------------------------------------------------------------------------------------------
# running normalisation (kept in buffers, so checkpoints carry it)
# ------------------------------------------------------------------------------------------------
class RunningMeanStd(nn.Module):
    """Running mean and variance (Chan et al.'s parallel update), as Stable-Baselines3's VecNormalize."""

    def __init__(self, shape: tuple = (), epsilon: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(float(epsilon), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x, mask: Optional[torch.Tensor] = None) -> None:
        """Add the rows of ``x`` (where ``mask`` is true) to the statistics, on their device and
        without a host sync (no rows: nothing changes)."""
        x = (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x)))
        x = x.to(self.mean.device, torch.float64).reshape(-1, *self.mean.shape)
        w = torch.ones(x.shape[0], dtype=torch.float64, device=x.device) if mask is None \
            else mask.to(x.device, torch.float64).reshape(-1)
        n = w.sum()
        w = w.reshape(-1, *([1] * len(self.mean.shape)))
        batch_mean = (x * w).sum(0) / n.clamp_min(1.0)
        batch_var = ((x - batch_mean).pow(2) * w).sum(0) / n.clamp_min(1.0)
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def std(self, epsilon: float = 1e-8) -> torch.Tensor:
        return torch.sqrt(self.var + epsilon)


class RewardScaler(nn.Module):
    """Divide rewards by the running std of the discounted return (SB3 VecNormalize / CleanRL).

    ``G_t = gamma * G_{t-1} * (1 - done_{t-1}) + r_t``;  ``r_t / sqrt(Var[G] + eps)``.
    """

    def __init__(self, num_envs: int, gamma: float, epsilon: float = 1e-8):
        super().__init__()
        self.rms = RunningMeanStd(())
        self.register_buffer("returns", torch.zeros(num_envs, dtype=torch.float64))
        self.gamma, self.epsilon = float(gamma), float(epsilon)

    @torch.no_grad()
    def __call__(self, rewards: torch.Tensor, dones: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scaled rewards (float32, on the rewards' device); ``valid=False`` rows (reset steps) are left out."""
        device = self.returns.device
        r = to_device(rewards, device, torch.float64)
        keep = torch.ones_like(r, dtype=torch.bool) if valid is None else to_device(valid, device, torch.bool)
        self.returns.copy_(torch.where(keep, self.returns * self.gamma + r, self.returns))
        self.rms.update(self.returns, keep)
        self.returns.masked_fill_(to_device(dones, device, torch.bool), 0.0)
        return (r / torch.sqrt(self.rms.var + self.epsilon)).float()


class EpisodeStats:
    """Returns and lengths of the training episodes, counted on the rollout's device.

    ``step`` adds one step of every env (reset steps, ``valid=False``, add no length) and keeps
    the totals of the episodes that ended; ``finished`` hands them to the host once per rollout,
    as ``[(return, length), ...]`` in the order they ended."""

    def __init__(self, num_envs: int, device):
        self.returns = torch.zeros(num_envs, dtype=torch.float64, device=device)
        self.lengths = torch.zeros(num_envs, dtype=torch.float64, device=device)
        self._ended: list[tuple] = []

    def reset(self) -> None:
        self.returns.zero_()
        self.lengths.zero_()
        self._ended = []

    def step(self, rewards: torch.Tensor, dones: torch.Tensor, valid: torch.Tensor) -> None:
        self.returns += rewards
        self.lengths += valid
        self._ended.append((dones, torch.stack([self.returns, self.lengths], 1)))
        self.returns.masked_fill_(dones, 0.0)
        self.lengths.masked_fill_(dones, 0.0)

    def finished(self) -> list:
        if not self._ended:
            return []
        dones, totals = zip(*self._ended)
        self._ended = []
        ended = torch.stack(totals)[torch.stack(dones)]  # (episodes, 2): step-major, then env
        return [(ret, int(length)) for ret, length in ended.cpu().tolist()]


# ------------------------------------------------------------------------------------------------
# policies: defaults, checks, adapters
# ------------------------------------------------------------------------------------------------
def default_policy(observation_space, action_space, hidden: int) -> Policy:
    """The kit's MLP policy for a flat Box observation: categorical for Discrete, Gaussian for Box."""
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise IncompatibleError(
            f"the default MLP policy needs a flat Box observation, but this env observes {observation_space}; "
            "pass policy=... (e.g. VLAPolicy(model) for image+instruction observations, or --model_path)")
    obs_dim = int(observation_space.shape[0])
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalPolicy(obs_dim, int(action_space.n), hidden=(hidden, hidden))
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        low, high = action_space.low, action_space.high
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            low, high = None, None  # unbounded actions: the Gaussian acts in raw units
        return GaussianPolicy(obs_dim, int(action_space.shape[0]), hidden=(hidden, hidden),
                              action_low=low, action_high=high)
    raise IncompatibleError(f"action space {action_space} is not supported: use a Discrete or a flat Box space")


def _overrides(policy, name: str) -> bool:
    """Whether ``policy`` implements ``name`` itself (not the base class's NotImplementedError stub)."""
    method = getattr(type(policy), name, None)
    return method is not None and method is not getattr(Policy, name, None)


class GaussianExploration(DistributionPolicy):
    """A deterministic policy made stochastic for on-policy fine-tuning (e.g. TD3+BC's actor).

    ``a ~ N(mu(s), diag(sigma^2))`` in the unit action box, with ``mu(s)`` the wrapped policy's
    deterministic action mapped to [-1, 1] and a learnable state-independent ``log sigma``
    (initially ``log_std_init``). Observation normalisation and action bounds stay the wrapped
    policy's, so its behaviour is unchanged in deterministic mode.
    """

    def __init__(self, base: Policy, log_std_init: float = -1.0):
        nn.Module.__init__(self)
        self.base = base
        self.obs_dim, self.action_dim = base.obs_dim, base.action_dim
        self.log_std = nn.Parameter(torch.full((base.action_dim,), float(log_std_init), device=base.device))

    def normalize(self, obs):
        return self.base.normalize(obs)

    def set_obs_normalization(self, mean, std):
        self.base.set_obs_normalization(mean, std)

    def scale_action(self, unit_action):
        return self.base.scale_action(unit_action)

    def unscale_action(self, action):
        return self.base.unscale_action(action)

    def distribution(self, obs):
        mean = self.base.unscale_action(self.base.get_action(obs, deterministic=True))
        std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp().expand_as(mean)
        return Normal(mean, std, validate_args=False)  # (no argument checks: nets.py's docstring)


def resolve_policy(policy, config, device, observation_space, action_space) -> nn.Module:
    """The policy an on-policy trainer optimises: the one given (made stochastic when it is
    deterministic), else the default MLP for the spaces.

    Trainers build no model from a folder: ``config.model_path`` (``--model_path``) is turned into
    a policy at the top, by the command line or :mod:`vla_rl_lib.vla.pipeline`, and handed in as
    ``policy=`` (docs/architecture.md)."""
    if policy is None and config.model_path:
        raise ConfigError(f"config.model_path={config.model_path!r} is set but no policy was given: trainers do not "
                          "load models themselves. Pass policy=vla_rl_lib.vla.pipeline.policy_for_config(config), "
                          "use vla_rl_lib.vla.pipeline.ppo_from_model / grpo_from_model, or `vla-rl train --model_path`")
    if policy is None:
        policy = default_policy(observation_space, action_space, config.hidden_dim)
    else:
        policy = as_stochastic(policy)
    return policy.to(device)


def as_stochastic(policy: nn.Module, log_std_init: float = -1.0) -> nn.Module:
    """Return ``policy`` if it gives action log-likelihoods, else wrap a deterministic
    :class:`~vla_rl_lib.nets.Policy` in :class:`GaussianExploration`."""
    if _overrides(policy, "log_prob") or not isinstance(policy, Policy):
        return policy
    return GaussianExploration(policy, log_std_init)


def check_policy(policy, observation_space, action_space, device, example_obs: Obs = None) -> None:
    """Raise :class:`IncompatibleError` unless ``policy`` acts in ``action_space`` on ``observation_space``.

    ``example_obs`` is a batch of one real observation (default: a sample of the space)."""
    for name in ("get_action", "log_prob"):
        if not callable(getattr(policy, name, None)):
            raise IncompatibleError(f"the policy ({type(policy).__name__}) has no {name}(); on-policy training needs "
                                    "the policy interface of vla_rl_lib.nets (get_action, log_prob, entropy, ...)")
    discrete_space = isinstance(action_space, gym.spaces.Discrete)
    if bool(getattr(policy, "discrete", False)) != discrete_space:
        kind = "discrete" if getattr(policy, "discrete", False) else "continuous"
        raise IncompatibleError(f"the policy ({type(policy).__name__}) gives {kind} actions but the environment's "
                                f"action space is {action_space}; use a policy built for this environment")
    if discrete_space and hasattr(policy, "n_actions") and int(policy.n_actions) != int(action_space.n):
        raise IncompatibleError(f"the policy chooses among {policy.n_actions} actions but the environment has "
                                f"{action_space.n}; build the policy with n_actions={action_space.n}")
    if isinstance(observation_space, gym.spaces.Box) and hasattr(policy, "obs_dim") \
            and len(observation_space.shape) == 1 and int(policy.obs_dim) != int(observation_space.shape[0]):
        raise IncompatibleError(f"the policy takes observations of size {policy.obs_dim} but the environment gives "
                                f"{observation_space.shape[0]}; use a policy trained on this environment")
    sample = stack_obs([observation_space.sample()]) if example_obs is None else example_obs
    try:
        with torch.no_grad():
            action = policy.get_action(obs_to_tensor(sample, device), deterministic=True)
    except Exception as exc:  # a policy that cannot even act on one observation does not fit
        raise IncompatibleError(f"the policy ({type(policy).__name__}) failed on an observation of {observation_space}: "
                                f"{type(exc).__name__}: {exc}") from None
    shape = tuple(action.shape)
    want = (1,) if discrete_space else (1, *action_space.shape)
    if shape != want and not (discrete_space and shape == (1, 1)):
        raise IncompatibleError(f"the policy's actions have shape {shape[1:]} per observation but the environment's "
                                f"action space {action_space} needs {want[1:]}; use a policy with the right action size")


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with gradients switched off (GRPO's reference policy)."""
    ref = copy.deepcopy(module)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref.eval()

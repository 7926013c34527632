"""Networks shared by every algorithm: MLPs, policies and critics.

The policy interface
--------------------
Every policy (these, the Decision Transformer's, and ``VLAPolicy``) is an ``nn.Module`` with

* ``get_action(obs, deterministic=False) -> Tensor``: actions for a batch of observations;
* ``log_prob(obs, actions) -> Tensor (B,)`` and ``entropy(obs) -> Tensor (B,)``;
* ``value(obs) -> Tensor (B,)`` when ``has_value`` is True (a value head on shared features);
* ``evaluate_actions(obs, actions) -> (log_prob, entropy, value or None)`` in one forward pass;
* ``predict(obs, deterministic=True) -> np.ndarray``: one numpy observation (or a batch) in,
  environment actions out, as Stable-Baselines3's ``predict``.

``obs`` is a float tensor ``(B, obs_dim)`` on the policy's device, or, for image/language
policies, a dict of batched arrays. Policies keep their observation normaliser (``obs_mean``,
``obs_std`` buffers) and action bounds inside, so a policy handed from an offline trainer to an
online one acts the same way. Continuous policies act in the environment's action bounds.

Distribution checks
-------------------
The kit's policies build their ``torch.distributions`` objects with ``validate_args=False``: the
checks (``scale > 0``, a sample in the support) cost several small ops per distribution, about a
tenth of a small-network update, and guard against parameters these policies never produce (a
scale ``exp(clamp(log_std))``, logits from a network). That choice is local: the kit never
changes torch's global default (``Distribution.set_default_validate_args``), so a distribution
the user builds is checked as the user asked (by default, it is).

Networks know no training loop.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Categorical, Normal

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


class OutputLinear(nn.Linear):
    """The last layer of a network: computed in float32 even under bf16 autocast.

    Under ``OfflineRLConfig.precision="bf16"`` the hidden layers' matmuls run in bfloat16 (about
    2.4x faster on CPUs with native bf16), but a bfloat16 output has 8 significant bits: a Q-value
    of 300 would be rounded to a multiple of 2, far coarser than the TD errors being learnt. The
    output layer (and everything after it) therefore stays in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def adam(params, lr: float, eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False):
    """Adam (AdamW with ``decoupled=True``) with torch's fused kernel where it is available: one
    op per step instead of a dozen per tensor, several times faster for small networks on a CPU."""
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    params = list(params)
    try:
        return cls(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, lr=lr, eps=eps, weight_decay=weight_decay)


class MLP(nn.Sequential):
    """``nn.Sequential`` that calls each layer's ``forward`` directly.

    ``nn.Module.__call__`` costs a few microseconds per layer (hook and tracing checks), as much as
    the layer's own work in the small networks of PPO on CartPole, where it is paid on every rollout
    step. A layer with hooks registered on it is still called through ``__call__``."""

    def forward(self, x):
        for layer in self._modules.values():
            hooked = (layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks
                      or layer._backward_pre_hooks)
            x = layer(x) if hooked else layer.forward(x)
        return x


def mlp(in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256), activation: type[nn.Module] = nn.ReLU,
        output_activation: Optional[type[nn.Module]] = None, layer_norm: bool = False,
        dropout: float = 0.0) -> MLP:
    """A multi-layer perceptron ``in_dim -> hidden... -> out_dim``."""
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden:
        layers.append(nn.Linear(last, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(activation())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        last = width
    layers.append(OutputLinear(last, out_dim))
    if output_activation is not None:
        layers.append(output_activation())
    return MLP(*layers)


def orthogonal_init(module: nn.Module, gain: float = math.sqrt(2), last_gain: Optional[float] = None) -> nn.Module:
    """Orthogonal weights and zero biases (the PPO "implementation detail"); the last linear layer
    gets ``last_gain`` when given (0.01 for policy heads, 1.0 for value heads)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    for i, m in enumerate(linears):
        g = last_gain if (last_gain is not None and i == len(linears) - 1) else gain
        nn.init.orthogonal_(m.weight, g)
        nn.init.zeros_(m.bias)
    return module


def without_distribution_checks(fn):
    """Deprecated, and changes nothing: returns ``fn`` as it is.

    It used to switch torch's distribution checks off globally around ``fn``; the kit's policies
    now skip them locally (``validate_args=False``, see the module docstring) and torch's global
    default stays as the user set it. This name stays until ``online/grpo.py`` (issue 16, in
    progress) stops decorating with it (issue 18)."""
    return fn


def as_float_tensor(value, device) -> torch.Tensor:
    """A float32 tensor on ``device`` from numbers, a numpy array or a tensor on any device (a tensor
    is moved with ``.to``, never through numpy: ``np.asarray`` of a CUDA tensor fails)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(value, dtype=np.float32), device=device)


class Policy(nn.Module):
    """Base class of the kit's policies: normalisation, action bounds, numpy ``predict``."""

    has_value = False
    discrete = False

    def __init__(self, obs_dim: int, action_dim: int, action_low=None, action_high=None):
        super().__init__()
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self.register_buffer("obs_mean", torch.zeros(self.obs_dim))
        self.register_buffer("obs_std", torch.ones(self.obs_dim))
        low = -np.ones(self.action_dim) if action_low is None else np.broadcast_to(action_low, (self.action_dim,))
        high = np.ones(self.action_dim) if action_high is None else np.broadcast_to(action_high, (self.action_dim,))
        self.register_buffer("action_low", torch.tensor(np.array(low, dtype=np.float32)))
        self.register_buffer("action_high", torch.tensor(np.array(high, dtype=np.float32)))

    # -- observation and action spaces ----------------------------------------------------------
    def set_obs_normalization(self, mean, std) -> None:
        """Fix the observation normaliser (dataset statistics); ``x -> (x - mean) / std``."""
        self.obs_mean.copy_(as_float_tensor(mean, self.obs_mean.device))
        self.obs_std.copy_(as_float_tensor(std, self.obs_std.device))

    def set_action_bounds(self, low, high) -> None:
        """The environment's action bounds (continuous policies act inside them)."""
        self.action_low.copy_(as_float_tensor(low, self.action_low.device))
        self.action_high.copy_(as_float_tensor(high, self.action_high.device))

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def scale_action(self, unit_action: torch.Tensor) -> torch.Tensor:
        """Map an action in [-1, 1] to the environment's bounds."""
        return self.action_low + (unit_action + 1.0) * 0.5 * (self.action_high - self.action_low)

    def unscale_action(self, action: torch.Tensor) -> torch.Tensor:
        """Map an environment action into [-1, 1]."""
        return 2.0 * (action - self.action_low) / (self.action_high - self.action_low) - 1.0

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def to_tensor(self, obs) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=self.device)

    # -- the interface --------------------------------------------------------------------------
    def distribution(self, obs: torch.Tensor):
        raise NotImplementedError

    def get_action(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no action likelihood")

    def entropy(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no entropy")

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no value head")

    def act(self, obs: torch.Tensor):
        """Sample actions for a rollout: ``(actions, log pi(actions|obs), V(obs) or None)``."""
        actions = self.get_action(obs, deterministic=False)
        value = self.value(obs) if self.has_value else None
        return actions, self.log_prob(obs, actions), value

    def evaluate_actions(self, obs, actions):
        """``(log pi(actions|obs), entropy, V(obs) or None)`` with gradients (for policy updates)."""
        value = self.value(obs) if self.has_value else None
        return self.log_prob(obs, actions), self.entropy(obs), value

    @torch.no_grad()
    def predict(self, obs, deterministic: bool = True) -> np.ndarray:
        """Numpy in, numpy out; a single observation gives a single action. Acting runs the
        network in eval mode (no dropout), whatever mode training left it in."""
        x = self.to_tensor(obs)
        single = x.dim() == 1
        if single:
            x = x.unsqueeze(0)
        was_training = self.training  # (a trainer's evaluate() switches once for all its steps)
        if was_training:
            self.eval()
        try:
            action = self.get_action(x, deterministic=deterministic).cpu().numpy()
        finally:
            if was_training:
                self.train()
        return action[0] if single else action


class DistributionPolicy(Policy):
    """A policy given by ``distribution(obs)``: a diagonal Gaussian over actions in [-1, 1]
    (mapped to the environment's bounds) or a categorical over action indices. Sampling,
    likelihood and entropy come from one distribution per forward pass."""

    def distribution(self, obs):
        raise NotImplementedError

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:  # independent action dimensions add up
        return x if self.discrete else x.sum(-1)

    def _to_env(self, sample: torch.Tensor) -> torch.Tensor:
        return sample if self.discrete else self.scale_action(sample)

    def _from_env(self, actions: torch.Tensor) -> torch.Tensor:
        return actions.long().reshape(-1) if self.discrete else self.unscale_action(actions)

    def get_action(self, obs, deterministic=False):
        dist = self.distribution(obs)
        if deterministic:
            return self._to_env(dist.probs.argmax(-1) if self.discrete else dist.mean)
        return self._to_env(dist.sample())

    def log_prob(self, obs, actions):
        return self._reduce(self.distribution(obs).log_prob(self._from_env(actions)))

    def entropy(self, obs):
        return self._reduce(self.distribution(obs).entropy())

    def act(self, obs):
        dist = self.distribution(obs)
        sample = dist.sample()
        value = self.value(obs) if self.has_value else None
        return self._to_env(sample), self._reduce(dist.log_prob(sample)), value

    def evaluate_actions(self, obs, actions):
        dist = self.distribution(obs)
        value = self.value(obs) if self.has_value else None
        return self._reduce(dist.log_prob(self._from_env(actions))), self._reduce(dist.entropy()), value


class GaussianPolicy(DistributionPolicy):
    """Diagonal Gaussian with a state-independent log std (PPO, IQL).

    ``a ~ N(mu(s), diag(sigma^2))``; ``tanh_mean=True`` squashes the mean into [-1, 1] as CORL's
    IQL does. Sampled actions are not squashed: the trainer clips them to the bounds when stepping
    the environment, as Stable-Baselines3 does.
    """

    def __init__(self, obs_dim, action_dim, hidden=(64, 64), activation=nn.Tanh, log_std_init: float = 0.0,
                 tanh_mean: bool = False, action_low=None, action_high=None, ortho_init: bool = True,
                 dropout: float = 0.0):
        super().__init__(obs_dim, action_dim, action_low, action_high)
        self.net = mlp(obs_dim, action_dim, hidden, activation, dropout=dropout)
        if ortho_init:
            orthogonal_init(self.net, last_gain=0.01)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))
        self.tanh_mean = tanh_mean

    def distribution(self, obs):
        mean = self.net(self.normalize(obs))
        if self.tanh_mean:
            mean = torch.tanh(mean)
        std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp().expand_as(mean)
        return Normal(mean, std, validate_args=False)  # (no argument checks: nets.py's docstring)


class TanhGaussianPolicy(Policy):
    """Tanh-squashed Gaussian (SAC, CQL).

    ``u ~ N(mu(s), sigma(s)^2)``, ``a = tanh(u)``;
    ``log pi(a|s) = sum_i [log N(u_i) - log(1 - tanh(u_i)^2)]``.
    """

    def __init__(self, obs_dim, action_dim, hidden=(256, 256), activation=nn.ReLU, action_low=None, action_high=None):
        super().__init__(obs_dim, action_dim, action_low, action_high)
        self.trunk = mlp(obs_dim, 2 * action_dim, hidden, activation)

    def _mean_log_std(self, obs):
        mean, log_std = self.trunk(self.normalize(obs)).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs, deterministic: bool = False, num_samples: Optional[int] = None):
        """Reparameterised sample: returns (action in [-1, 1], log_prob).

        ``num_samples=N`` draws ``N`` actions per state from one pass of the network: rows
        ``b * N ... b * N + N - 1`` of the ``(B * N, |A|)`` result belong to ``obs[b]``."""
        mean, log_std = self._mean_log_std(obs)
        if num_samples is not None:
            shape = (mean.shape[0] * num_samples, mean.shape[1])
            mean = mean.unsqueeze(1).expand(-1, num_samples, -1).reshape(shape)
            log_std = log_std.unsqueeze(1).expand(-1, num_samples, -1).reshape(shape)
        noise = torch.zeros_like(mean) if deterministic else torch.randn_like(mean)
        u = mean + log_std.exp() * noise
        a = torch.tanh(u)
        # log N(u; mean, sigma) = -noise^2 / 2 - log sigma - log sqrt(2 pi)   (u = mean + sigma * noise)
        # log(1 - tanh(u)^2)    = 2 * (log 2 - u - softplus(-2u)), numerically stable
        log_prob = (-0.5 * noise.pow(2) - log_std - 2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return a, log_prob - 0.5 * math.log(2 * math.pi) * mean.shape[-1]

    def get_action(self, obs, deterministic=False):
        return self.scale_action(self.sample(obs, deterministic)[0])

    def act(self, obs):
        unit, log_prob = self.sample(obs)
        return self.scale_action(unit), log_prob, None

    def log_prob(self, obs, actions):
        a = self.unscale_action(actions).clamp(-1 + 1e-6, 1 - 1e-6)
        u = torch.atanh(a)
        mean, log_std = self._mean_log_std(obs)
        return (Normal(mean, log_std.exp(), validate_args=False).log_prob(u) - torch.log1p(-a.pow(2) + 1e-6)).sum(-1)

    def entropy(self, obs):
        # no closed form: single-sample estimate  H ~= -log pi(a|s)
        return -self.sample(obs)[1]


class DeterministicPolicy(Policy):
    """``a = tanh(f(s))`` in the action bounds (TD3+BC). Exploration noise is the trainer's job."""

    def __init__(self, obs_dim, action_dim, hidden=(256, 256), activation=nn.ReLU, action_low=None, action_high=None):
        super().__init__(obs_dim, action_dim, action_low, action_high)
        self.net = mlp(obs_dim, action_dim, hidden, activation, output_activation=nn.Tanh)

    def unit_action(self, obs):
        return self.net(self.normalize(obs))

    def get_action(self, obs, deterministic=False):
        return self.scale_action(self.unit_action(obs))


class CategoricalPolicy(DistributionPolicy):
    """Softmax over discrete actions (PPO/GRPO on CartPole): ``pi(a|s) = softmax(f(s))_a``."""

    discrete = True

    def __init__(self, obs_dim, n_actions, hidden=(64, 64), activation=nn.Tanh, ortho_init: bool = True):
        super().__init__(obs_dim, 1)
        self.n_actions = int(n_actions)
        self.net = mlp(obs_dim, n_actions, hidden, activation)
        if ortho_init:
            orthogonal_init(self.net, last_gain=0.01)

    def distribution(self, obs):
        return Categorical(logits=self.net(self.normalize(obs)), validate_args=False)

    # acting and evaluating straight from log-softmax: the same distribution, without the
    # torch.distributions object's per-call overhead, which dominates for a small network
    def _log_pi(self, obs):
        return torch.log_softmax(self.net(self.normalize(obs)), dim=-1)

    def act(self, obs):
        """Sample by inversion: the first action whose cumulative probability exceeds ``u ~ U(0, 1)``
        (the same distribution as ``torch.multinomial``, in about half its time for a few actions)."""
        log_pi = self._log_pi(obs)
        u = torch.rand(log_pi.shape[0], 1, device=log_pi.device)
        actions = (log_pi.exp().cumsum(-1) < u).sum(-1, keepdim=True).clamp_(max=self.n_actions - 1)
        value = self.value(obs) if self.has_value else None
        return actions.squeeze(-1), log_pi.gather(-1, actions).squeeze(-1), value

    def evaluate_actions(self, obs, actions):
        """``(log pi(a|s), H = -sum_a pi(a|s) log pi(a|s), V(s) or None)``."""
        log_pi = self._log_pi(obs)
        log_prob = log_pi.gather(-1, actions.long().reshape(-1, 1)).squeeze(-1)
        value = self.value(obs) if self.has_value else None
        return log_prob, -(log_pi.exp() * log_pi).sum(-1), value


class ValueNetwork(nn.Module):
    """State value ``V(s)``."""

    def __init__(self, obs_dim, hidden=(256, 256), activation=nn.ReLU, ortho_init: bool = False, layer_norm: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, activation, layer_norm=layer_norm)
        if ortho_init:
            orthogonal_init(self.net, last_gain=1.0)

    def forward(self, obs):
        return self.net(obs).squeeze(-1)


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers evaluated in one batched matmul."""

    def __init__(self, n: int, in_dim: int, out_dim: int, float32_output: bool = False):
        super().__init__()
        self.float32_output = float32_output  # an output layer: float32 even under autocast (see OutputLinear)
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim))
        bound = 1 / math.sqrt(in_dim)
        for i in range(n):  # same init as nn.Linear, one member at a time
            nn.init.kaiming_uniform_(self.weight.data[i].T, a=math.sqrt(5))
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        """``x``: ``(n, B, in_dim)``, or ``(B, in_dim)`` shared by all members."""
        if x.dim() == 2:
            x = x.expand(self.weight.shape[0], *x.shape)
        with self._precision(x) as x:
            return torch.baddbmm(self.bias, x, self.weight)

    def member(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Member ``i`` alone on ``x (B, in_dim)``: one 2-D matmul."""
        with self._precision(x) as x:
            return torch.addmm(self.bias[i, 0], x, self.weight[i])

    @contextlib.contextmanager
    def _precision(self, x):
        if self.float32_output and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                yield x.float()
        else:
            yield x


class QEnsemble(nn.Module):
    """``n`` Q-functions ``Q_i(s, a)`` (twin Q for n=2) computed together; returns (n, B)."""

    def __init__(self, obs_dim, action_dim, hidden=(256, 256), n: int = 2, activation=nn.ReLU, layer_norm: bool = False):
        super().__init__()
        dims = [obs_dim + action_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers.append(EnsembleLinear(n, a, b))
            if layer_norm:
                layers.append(nn.LayerNorm(b))
            layers.append(activation())
        layers.append(EnsembleLinear(n, dims[-1], 1, float32_output=True))
        self.net = nn.Sequential(*layers)
        self.n = n

    # from this many rows on, one 2-D matmul per member beats the batched matmul (whose backward
    # copies its transposed operands): 30% faster at CQL's 7,936 rows, 15% slower at 256
    LOOP_ROWS = 2048

    def forward(self, obs, actions, members: Optional[slice] = None):
        """``(n, B)`` Q-values; ``members=slice(0, 1)`` computes only the first critic (``(1, B)``)."""
        x = torch.cat([obs, actions], dim=-1)
        if members is None and not (x.dim() == 2 and x.shape[0] >= self.LOOP_ROWS):
            return self.net(x).squeeze(-1)
        return torch.stack([self._member(x, i) for i in range(self.n)[members or slice(None)]])

    def _member(self, x: torch.Tensor, i: int) -> torch.Tensor:
        for layer in self.net:
            x = layer.member(x, i) if isinstance(layer, EnsembleLinear) else layer(x)
        return x.squeeze(-1)

#!/usr/bin/env python
"""Write the instructor versions of the course assignments (notebooks/assignments/*.ipynb).

Solutions are marked nbgrader-style (``### BEGIN SOLUTION`` / ``### END SOLUTION``);
``vla-rl assignments release --output DIR`` writes the student versions. Each exercise is a short
explanation, a function to fill in, and a check cell; after the checks a short training run uses
the student's functions inside the library, so a correct answer visibly learns.

    python scripts/make_assignments.py            # rewrite notebooks/assignments/*.ipynb
    python scripts/make_assignments.py --check    # exit 1 if a committed notebook differs
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "notebooks" / "assignments"
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def md(text):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(text, tags=()):
    cell = nbformat.v4.new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def notebook(cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    nb.metadata["kernelspec"] = dict(KERNEL)
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


def params(extra=""):
    return code(f'''
# papermill parameters (the grader runs with smoke=True; VLA_RL_SMOKE=1 sets it too)
from vla_rl_lib.notebook import smoke_default
smoke = smoke_default()
seed = 0
{extra}'''.rstrip(), tags=("parameters",))


def exercise(title, text, solution, check):
    return [md(f"### {title}\n\n{text}"), code(solution), code(check)]


SETUP = '''
import numpy as np
import torch
import vla_rl_lib
from vla_rl_lib import exercises
torch.manual_seed(0)
'''

# ------------------------------------------------------------------------------------------------
OFFLINE = [
    md("""
# Assignment: offline RL — the hearts of IQL, CQL, TD3+BC and the Decision Transformer

Fill in each function between the markers, run its check cell, and read the feedback: it names the
case that failed, what was expected, what you returned, and, for common mistakes, what went wrong.
At the end, IQL trains on a D4RL-style dataset **with your functions inside it**.
"""),
    params(),
    code(SETUP),
    *exercise("1. Expectile loss (IQL's value regression)", r"""
IQL fits $V(s)$ to an upper expectile of $Q(s,a)$ over the dataset's actions:
$$L_2^\tau(u) = |\tau - \mathbb{1}(u<0)|\,u^2,\qquad u = Q(s,a) - V(s),$$
averaged over the batch. Return a scalar tensor.""", '''
def expectile_loss(diff, expectile):
    ### BEGIN SOLUTION
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff ** 2).mean()
    ### END SOLUTION
''', "exercises.check_expectile_loss(expectile_loss)"),
    *exercise("2. Advantage weights (IQL's policy extraction)", r"""
The policy imitates dataset actions weighted by $w = \min(\exp(\beta A), w_{max})$ with
$A = Q(s,a) - V(s)$, $\beta$ the temperature and $w_{max} = 100$. Return one weight per sample.
The weights only scale the imitation loss: no gradient may flow through them into the critics.""", '''
def advantage_weights(advantages, temperature, max_weight=100.0):
    ### BEGIN SOLUTION
    return torch.exp(temperature * advantages.detach()).clamp(max=max_weight)
    ### END SOLUTION
''', "exercises.check_advantage_weights(advantage_weights)"),
    *exercise("3. The CQL penalty", r"""
CQL pushes down Q on actions the data does not support and up on the data's actions:
$$\text{penalty} = \mathbb{E}_B\Big[\log\!\sum_{a' \in \{a_1..a_N, a_{data}\}} e^{Q(s,a')} - Q(s, a_{data})\Big].$$
`q_data` is `(B,)`, `q_sampled` is `(B, N)` (Q of N sampled actions). Mind numerical stability.""", '''
def cql_penalty(q_data, q_sampled):
    ### BEGIN SOLUTION
    all_q = torch.cat([q_sampled, q_data.unsqueeze(1)], dim=1)
    return (torch.logsumexp(all_q, dim=1) - q_data).mean()
    ### END SOLUTION
''', "exercises.check_cql_penalty(cql_penalty)"),
    *exercise("4. The TD3+BC actor loss", r"""
$$L_\pi = -\lambda\,\mathbb{E}_B[Q(s,\pi(s))] + \mathbb{E}_B[(\pi(s)-a)^2],\qquad \lambda = \frac{\alpha}{\mathbb{E}_B|Q(s,\pi(s))|}$$
with $\lambda$ a constant (no gradient flows through it). The BC term averages over batch and action dimensions.""", '''
def td3_bc_actor_loss(q_pi, pi, actions, alpha):
    ### BEGIN SOLUTION
    lmbda = alpha / q_pi.abs().mean().detach()
    return -lmbda * q_pi.mean() + ((pi - actions) ** 2).mean()
    ### END SOLUTION
''', "exercises.check_td3_bc_actor_loss(td3_bc_actor_loss)"),
    *exercise("5. Returns-to-go (the Decision Transformer's conditioning)", r"""
$\hat R_t = \sum_{t' \ge t} r_{t'}$ (undiscounted), for one episode's rewards (a numpy array).""", '''
def returns_to_go(rewards):
    ### BEGIN SOLUTION
    return np.cumsum(rewards[::-1])[::-1].copy()
    ### END SOLUTION
''', "exercises.check_returns_to_go(returns_to_go)"),
    md("""
## Your functions inside IQL

IQL now trains on the kit's `pendulum-medium-v0` dataset with **your** `expectile_loss` and
`advantage_weights` in place of the library's. A correct answer learns: the evaluation return
rises far above a random policy's (about -1200 on Pendulum).
"""),
    code('''
from vla_rl_lib import IQLTrainer, OfflineRLConfig, OfflineReplayBuffer, load_dataset
from vla_rl_lib.offline import iql

data = load_dataset("pendulum-medium-v0")
buffer = OfflineReplayBuffer(obs_dim=3, action_dim=1).load_dataset(data)
config = OfflineRLConfig(num_epochs=1 if smoke else 5, steps_per_epoch=300 if smoke else 1000, batch_size=256,
                         hidden_dim=64 if smoke else 256, eval_episodes=3 if smoke else 10, eval_freq=0,
                         seed=seed, device="cpu", output_dir="runs/assignment_iql")
with exercises.patched(iql, "expectile_loss", expectile_loss), exercises.patched(iql, "advantage_weights", advantage_weights):
    trainer = IQLTrainer(obs_dim=3, action_dim=1, config=config, expectile=0.7, temperature=3.0)
    trainer.train(buffer)
result = trainer.evaluate(num_episodes=config.eval_episodes)
print(f"IQL with your functions: mean return {result['mean_reward']:.1f} (random policy: about -1200)")
'''),
]

# ------------------------------------------------------------------------------------------------
ONLINE = [
    md("""
# Assignment: online RL — GAE, PPO, SAC and GRPO

Fill in each function, run its check, read the feedback. At the end PPO trains on CartPole-v1
**with your GAE and clipped surrogate inside it**.
"""),
    params(),
    code(SETUP),
    *exercise("1. Generalised advantage estimation", r"""
For a rollout of shape `(T, N)` (T steps of N environments):
$$\delta_t = r_t + \gamma V(s_{t+1})(1-\text{term}_t) - V(s_t),\qquad A_t = \delta_t + \gamma\lambda(1-\text{done}_t)A_{t+1}.$$
`next_values[t]` is $V(s_{t+1})$ of the true next observation (for a time-limit truncation, the final
observation: it is still bootstrapped); `dones = terminations or truncations`. Return the advantages `(T, N)`.""", '''
def compute_gae(rewards, values, next_values, terminations, dones, gamma, gae_lambda):
    ### BEGIN SOLUTION
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_values[t] * (1 - terminations[t]) - values[t]
        last = delta + gamma * gae_lambda * (1 - dones[t]) * last
        advantages[t] = last
    return advantages
    ### END SOLUTION
''', "exercises.check_compute_gae(compute_gae)"),
    *exercise("2. PPO's clipped surrogate", r"""
As a loss to minimise: $L = -\mathbb{E}_t\big[\min(r_t A_t,\ \text{clip}(r_t, 1-\epsilon, 1+\epsilon)A_t)\big]$.""", '''
def clipped_surrogate(ratio, advantages, clip_range):
    ### BEGIN SOLUTION
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * advantages
    return -torch.min(unclipped, clipped).mean()
    ### END SOLUTION
''', "exercises.check_clipped_surrogate(clipped_surrogate)"),
    *exercise("3. SAC's temperature loss", r"""
Automatic entropy tuning on $\log\alpha$: $L_\alpha = -\mathbb{E}\big[\log\alpha\,(\log\pi(\tilde a|s) + \bar H)\big]$,
the bracket treated as a constant; $\bar H$ is the target entropy (e.g. $-|A|$).""", '''
def sac_temperature_loss(log_alpha, log_pi, target_entropy):
    ### BEGIN SOLUTION
    return -(log_alpha * (log_pi + target_entropy).detach()).mean()
    ### END SOLUTION
''', "exercises.check_sac_temperature_loss(sac_temperature_loss)"),
    *exercise("4. GRPO's group-relative advantages", r"""
`returns` is `(G, K)`: G groups of K rollouts from the same start. $A_{g,i} = (R_{g,i} - \text{mean}_j R_{g,j}) / (\text{std}_j R_{g,j} + 10^{-8})$
(sample standard deviation).""", '''
def group_relative_advantages(returns):
    ### BEGIN SOLUTION
    mean = returns.mean(dim=-1, keepdim=True)
    std = returns.std(dim=-1, keepdim=True)
    return (returns - mean) / (std + 1e-8)
    ### END SOLUTION
''', "exercises.check_group_relative_advantages(group_relative_advantages)"),
    *exercise("5. The k3 KL estimate", r"""
From actions sampled by $\pi$: $k_3 = e^{d} - d - 1$ with $d = \log\pi_{ref}(a|s) - \log\pi(a|s)$ (per sample, always $\ge 0$).""", '''
def k3_kl(log_probs, ref_log_probs):
    ### BEGIN SOLUTION
    d = ref_log_probs - log_probs
    return torch.exp(d) - d - 1
    ### END SOLUTION
''', "exercises.check_k3_kl(k3_kl)"),
    md("""
## Your functions inside PPO

PPO trains on CartPole-v1 with **your** `compute_gae` and `clipped_surrogate`. A correct answer
balances the pole: the evaluation return climbs towards 500 (a random policy gets about 20).
"""),
    code('''
from vla_rl_lib import PPOTrainer, RLConfig
from vla_rl_lib.online import ppo

def gae_with_returns(*args, **kwargs):          # the library's GAE also returns the value targets
    advantages = compute_gae(*args, **kwargs)
    values = args[1] if len(args) > 1 else kwargs["values"]
    return advantages, advantages + values

config = RLConfig(algorithm="ppo", env="CartPole-v1", num_envs=8, rollout_steps=32, batch_size=256, ppo_epochs=20,
                  ppo_gae_lambda=0.8, discount_gamma=0.98, learning_rate=1e-3, ppo_entropy_coef=0.0,
                  total_timesteps=4_096 if smoke else 50_000, eval_freq=0, eval_episodes=3 if smoke else 10,
                  seed=seed, device="cpu", output_dir="runs/assignment_ppo")
with exercises.patched(ppo, "compute_gae", gae_with_returns), exercises.patched(ppo, "clipped_surrogate", clipped_surrogate):
    trainer = PPOTrainer(env="CartPole-v1", config=config)
    trainer.train()
result = trainer.evaluate(num_episodes=config.eval_episodes)
print(f"PPO with your functions: mean return {result['mean_reward']:.1f} (random policy: about 20; solved: 500)")
'''),
]

# ------------------------------------------------------------------------------------------------
VLA = [
    md("""
# Assignment: VLA action tokens

OpenVLA and RT-2 turn each continuous action dimension into one of 256 tokens, so a language
model's head can predict actions. Write the tokeniser and the de-tokeniser; then a small policy
with a token head learns to drive from the kit's expert demonstrations **through your functions**.
"""),
    params(),
    code(SETUP),
    *exercise("1. Tokenise", r"""
Actions lie in $[-1, 1]$ (values outside are clipped). Split $[-1,1]$ into `bins` equal intervals;
the token of $a$ is the index of its interval: $\lfloor (a+1)/2 \cdot \text{bins} \rfloor$, clipped to
$[0, \text{bins}-1]$. Return `np.int64` tokens of the same shape.""", '''
def tokenize_actions(actions, bins=256):
    ### BEGIN SOLUTION
    a = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
    return np.clip(np.floor((a + 1.0) / 2.0 * bins), 0, bins - 1).astype(np.int64)
    ### END SOLUTION
''', "exercises.check_tokenize_actions(tokenize_actions)"),
    *exercise("2. De-tokenise", r"""
A token stands for the centre of its interval: $a = -1 + (2\,\text{token} + 1)/\text{bins}$. Return float32.""", '''
def detokenize_actions(tokens, bins=256):
    ### BEGIN SOLUTION
    return (-1.0 + (2.0 * np.asarray(tokens, dtype=np.float64) + 1.0) / bins).astype(np.float32)
    ### END SOLUTION
''', "exercises.check_detokenize_actions(detokenize_actions)"),
    md("""
## Your tokens drive a car

A small network reads the simulator's state vector (which includes the instruction, one-hot) and
predicts one of 256 tokens per action dimension, trained with cross-entropy on **your** tokens of
the expert's actions from `driving-expert-v1`; at test time **your** de-tokeniser turns its
tokens back into steering and acceleration. A correct answer drives: the success rate is far
above an untrained network's.
"""),
    code('''
import torch.nn as nn
from vla_rl_lib import load_dataset, make_env
from vla_rl_lib.nets import mlp

data = load_dataset("driving-expert-v1")
states = torch.as_tensor(data["observations"], dtype=torch.float32)
tokens = torch.as_tensor(tokenize_actions(data["actions"]), dtype=torch.long)      # (N, 2), your tokens
bins = 256
net = mlp(states.shape[1], 2 * bins, hidden=(128, 128))
optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
steps = 200 if smoke else 3000
for step in range(steps):
    idx = torch.randint(0, len(states), (256,))
    logits = net(states[idx]).view(-1, 2, bins)
    loss = nn.functional.cross_entropy(logits.reshape(-1, bins), tokens[idx].reshape(-1))
    optimizer.zero_grad(); loss.backward(); optimizer.step()
print(f"cross-entropy after {steps} steps: {loss.item():.3f}")

def success_rate(network, episodes):
    env = make_env("driving")
    wins = 0
    for ep in range(episodes):
        obs, info = env.reset(seed=10_000 + ep)
        done = False
        while not done:
            with torch.no_grad():
                token = network(torch.as_tensor(obs["state"])[None]).view(2, bins).argmax(-1).numpy()
            obs, reward, terminated, truncated, info = env.step(detokenize_actions(token))   # your de-tokeniser
            done = terminated or truncated
        wins += bool(info["success"])
    return wins / episodes

episodes = 5 if smoke else 40
print(f"success rate with your tokens: {success_rate(net, episodes):.0%}; "
      f"untrained network: {success_rate(mlp(states.shape[1], 2 * bins, hidden=(128, 128)), episodes):.0%}")
'''),
]

ASSIGNMENTS = {"offline_rl": OFFLINE, "online_rl": ONLINE, "vla_actions": VLA}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the committed notebooks are current")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    stale = []
    for name, cells in ASSIGNMENTS.items():
        text = nbformat.writes(notebook(cells)) + "\n"
        path = OUT / f"{name}.ipynb"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python scripts/make_assignments.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

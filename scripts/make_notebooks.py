#!/usr/bin/env python
"""Write the kit's notebooks (notebooks/*.ipynb) from the Python sources in this file.

The notebooks are generated so that they stay reviewable and consistent: every method notebook
has the same skeleton (what and why, key equations beside the library functions that implement
them, ONE cell tagged ``parameters``, training with the live plot, a rollout video, the
specification's metric ranges with a healthy/unhealthy flag, and ``metrics.json``/plot/mp4 in
``output_dir``). They are written without outputs and with the ``python3`` kernel.

    python scripts/make_notebooks.py            # rewrite notebooks/*.ipynb
    python scripts/make_notebooks.py --check    # exit 1 if a committed notebook differs
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"

KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def md(text: str):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(text: str):
    return nbformat.v4.new_code_cell(text.strip("\n"))


def params(text: str):
    cell = code(text)
    cell.metadata["tags"] = ["parameters"]
    return cell


def notebook(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    nb.metadata["kernelspec"] = dict(KERNEL)
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):  # stable ids keep diffs small
        cell["id"] = f"cell-{i:02d}"
    return nb


# ------------------------------------------------------------------------------------------------
# shared pieces
# ------------------------------------------------------------------------------------------------
IMPORTS = '''
import inspect, json, time
from pathlib import Path

import numpy as np
import torch
from IPython.display import HTML, Markdown, display

import vla_rl_lib
from vla_rl_lib.notebook import (final_metrics, metric_health, overestimation_diagnostic, smoke_default,
                                 write_run_metrics)
from widgets import LivePlot, show_health, show_overestimation, show_source, show_video
'''

PARAM_HEAD = '''
# Every knob of this notebook. papermill overrides them (`vla-rl run-notebook NB -p name value`).
smoke = smoke_default()      # True: shrink the run to well under a minute (VLA_RL_SMOKE set to 1, or -p smoke true)
output_dir = "runs/{name}"   # metrics.json, training.png and rollout.mp4 are written here
seed = 0
torch_threads = 1            # small networks train fastest on one thread; raise it for big models
'''

SMOKE_NOTE = '''
`smoke = True` (what CI and `pytest --nbval-lax` use) runs the same code on a tiny budget: it checks that
everything works, not that the agent learns. Run with `smoke = False` for the real thing.
'''

OFFLINE_DATA = '''
from vla_rl_lib import OfflineRLConfig, OfflineReplayBuffer, load_dataset
from vla_rl_lib.data import format_summary, summarize_dataset

out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(torch_threads)
if smoke:
    num_epochs, steps_per_epoch, batch_size, hidden_dim, eval_episodes, log_freq = 2, 40, 64, 64, 2, 10
data = load_dataset(dataset)
print(format_summary(summarize_dataset(data)))
obs_dim, action_dim = data["observations"].shape[1], data["actions"].shape[1]
buffer = OfflineReplayBuffer(obs_dim, action_dim).load_dataset(data)
print(f"buffer: {len(buffer)} transitions, evaluation environment {buffer.env_id}")
'''

OFFLINE_CONFIG = '''
config = OfflineRLConfig(num_epochs=num_epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                         learning_rate=learning_rate, hidden_dim=hidden_dim, discount_gamma=discount_gamma,
                         normalize_states=normalize_states, eval_freq=max(1, num_epochs // 4), eval_episodes=eval_episodes, log_freq=log_freq,
                         save_freq=0, seed=seed, output_dir=str(out))
plot = LivePlot(min_interval=2.0, save_path=out / "training.png")
'''

TRAIN_OFFLINE = '''
t0 = time.time()
trainer.train(buffer)
train_seconds = time.time() - t0
print(f"{trainer.global_step} gradient steps in {train_seconds:.1f} s; run directory {trainer.run_dir}")
'''

EVAL_VIDEO = '''
results = trainer.evaluate(num_episodes=eval_episodes, video_path=out / "rollout.mp4")
print({k: round(v, 3) if isinstance(v, float) else v for k, v in results.items() if k != "video"})
show_video(out / "rollout.mp4", caption=f"{trainer.algorithm.upper()} after training (deterministic policy)")
'''

HEALTH_MD = '''
## Is training healthy?

The specification's "Key Metrics" table gives the range each training metric should sit in. The table
below compares the final logged values (averaged over the last `log_freq` steps) with those ranges; the
shaded bands in the live plot are the same ranges (a curve drawn in red ended outside its range).
The loss ranges assume rewards of order one: with large returns (CartPole's reach 500) a value loss far
above 1 means the critic has not caught up with the returns yet, or that reward scaling
(`ppo_normalize_reward`, or normalised rewards in the dataset) would help; a short smoke run is rarely healthy.
'''


def health_code(kind: str) -> str:
    return f'''
final = final_metrics(plot.logs)
health = metric_health(final, "{kind}")
show_health(health)
'''


OVERESTIMATION_MD = '''
## Overestimation diagnostic

"Offline RL: Overestimation. Symptom: high Q-values but poor evaluation performance." Below, the value the
critic predicts for the first state and first action of evaluation episodes is set against the discounted
return the policy actually obtains from there. A prediction far above what is obtained is the symptom; the
specification's remedies are a larger CQL alpha, a more conservative IQL expectile, or more critics.
'''


def write_metrics(extra: str = "") -> str:
    return f'''
metrics_path = write_run_metrics(out, trainer, results, final, health, smoke=smoke, train_seconds=train_seconds{extra})
plot.save(out / "training.png")
print("wrote", metrics_path, out / "training.png", out / "rollout.mp4")
'''


def q_fn_code(critic: str, actor: str, unit_actions: bool) -> str:
    act = f"trainer.{actor}.unscale_action(a)" if unit_actions else "a"
    return f'''
def q_fn(obs, action):
    """The learned Q(s, a) (minimum over the critics), on raw observations and environment actions."""
    with torch.no_grad():
        o = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=trainer.device)[None]
        a = torch.as_tensor(np.asarray(action), dtype=torch.float32, device=trainer.device)[None]
        return trainer.{critic}(trainer.{actor}.normalize(o), {act}).min(dim=0).values.item()

diag = overestimation_diagnostic(trainer, q_fn, trainer.env_id, num_episodes=3 if smoke else 10,
                                 gamma=config.discount_gamma, seed=seed + 20_000)
show_overestimation(diag)
'''


def try_next(name: str, knob: str, values: str) -> str:
    return f'''
## Try next

* Move `{knob}` and rerun; the health table and the overestimation diagnostic tell you what changed.
* A sweep over it with three seeds, every executed notebook kept, a `summary.csv` and a comparison plot:

```bash
vla-rl sweep notebooks/{name}.ipynb --grid {knob}={values} --seeds 0,1,2 --workers 2 --output runs/{name}_sweep
```
'''


def offline_notebook(name, title, intro, param_lines, equations_md, equations_code, trainer_code, critic_code,
                     knob, values):
    return notebook([
        md(f"# {title}\n\n{intro}"),
        code(IMPORTS),
        params(PARAM_HEAD.format(name=name) + param_lines),
        md(SMOKE_NOTE),
        md(equations_md),
        code(equations_code),
        md("## The data\n\nA D4RL-format dataset the kit ships (`vla-rl make-dataset` makes others)."),
        code(OFFLINE_DATA),
        md("## Training, with the live plot\n\nThe plot redraws at most every 2 seconds; run headless "
           "(papermill) it keeps the final picture."),
        code(OFFLINE_CONFIG + trainer_code + TRAIN_OFFLINE),
        md("## The trained agent"),
        code(EVAL_VIDEO),
        md(HEALTH_MD),
        code(health_code("offline")),
        md(OVERESTIMATION_MD),
        code(critic_code),
        md("## Saving the run\n\n`metrics.json` is what `vla-rl sweep` reads into its summary."),
        code(write_metrics(", overestimation=diag")),
        md(try_next(name, knob, values)),
    ])


# ------------------------------------------------------------------------------------------------
# offline methods
# ------------------------------------------------------------------------------------------------
def offline_params(num_epochs=3, steps_per_epoch=1000, batch_size=256, learning_rate="3e-4", hidden_dim=128):
    """The shared knobs of the offline notebooks; defaults are budgets the algorithm tests showed to learn
    pendulum-medium-v0 (see each algorithm's learning test and docs/benchmarks.md)."""
    return f'''
dataset = "pendulum-medium-v0"   # a kit dataset name, a D4RL name on this machine, or a path to .hdf5
num_epochs = {num_epochs}
steps_per_epoch = {steps_per_epoch}
batch_size = {batch_size}
learning_rate = {learning_rate}
hidden_dim = {hidden_dim}
discount_gamma = 0.99
normalize_states = True          # standardise observations with the dataset's mean and std
eval_episodes = 10
log_freq = 100
'''


IQL = offline_notebook(
    "02_iql", "IQL: Implicit Q-Learning",
    "IQL learns from a fixed dataset without ever asking the critic about actions the data does not contain. "
    "It fits a state value `V(s)` by *expectile* regression on `Q(s, a)` over dataset actions (an expectile "
    "above 0.5 leans towards the best actions in the data), backs `Q` up through `V(s')` instead of a max over "
    "actions, and extracts the policy by advantage-weighted behaviour cloning. Simple, stable, and the "
    "specification's default for general offline RL.",
    offline_params() + '''expectile = 0.7      # tau of the value regression (0.5-0.9)
temperature = 3.0    # beta of the advantage weights exp(beta * A)
''',
    r'''
## Key equations, next to the code that computes them

1. Value: $L_V = \mathbb{E}_{(s,a)\sim D}\big[\,|\tau - \mathbb{1}(u<0)|\,u^2\big]$ with $u = Q_{\bar\theta}(s,a) - V(s)$ (`expectile_loss`)
2. Q: $L_Q = \mathbb{E}\big[(r + \gamma (1-d) V(s') - Q(s,a))^2\big]$ (`q_loss`)
3. Policy: $L_\pi = -\mathbb{E}\big[\exp(\beta\,(Q(s,a) - V(s)))\,\log\pi(a|s)\big]$, weights clipped (`awr_policy_loss`)
''',
    '''
from vla_rl_lib.offline.iql import IQLTrainer, awr_policy_loss, expectile_loss, q_loss

show_source(expectile_loss)
# u = Q(s,a) - V(s). With tau = 0.9 an error of V below Q (u > 0) costs 9 times one of V above Q (u < 0),
# so V settles near the upper end of the Q-values of the dataset's actions.
for tau in (0.5, 0.7, 0.9):
    below, above = expectile_loss(torch.tensor([1.0]), tau).item(), expectile_loss(torch.tensor([-1.0]), tau).item()
    print(f"tau={tau}: loss when V is 1 below Q = {below:.2f}, when V is 1 above Q = {above:.2f}")
show_source(awr_policy_loss)
''',
    '''trainer = IQLTrainer(obs_dim, action_dim, config=config, callbacks=[plot], expectile=expectile,
                     temperature=temperature)
''',
    q_fn_code("qf", "actor", True),
    "expectile", "0.5,0.7,0.9")

CQL = offline_notebook(
    "03_cql", "CQL: Conservative Q-Learning",
    "CQL is SAC with one extra term: it pushes Q down on actions the current policy (and a uniform sampler) "
    "likes, and up on the actions in the data. The learned Q is then a lower bound on the true value, so the "
    "policy does not exploit overestimated out-of-distribution actions.",
    offline_params(num_epochs=3, steps_per_epoch=500) + '''cql_alpha = 5.0      # weight of the conservative penalty
cql_samples = 10     # sampled actions per state in the log-sum-exp
min_q_weight = 1.0
''',
    r'''
## Key equations, next to the code that computes them

* Penalty: $\alpha\,\Big(\mathbb{E}_{s\sim D}\big[\log\sum_{a}\exp Q(s,a)\big] - \mathbb{E}_{(s,a)\sim D}[Q(s,a)]\Big)$, the log-sum-exp estimated with uniform and policy samples (`cql_penalty`)
* Critic: the Bellman error (target at the policy's mean action for $s'$) plus the penalty; actor: SAC's $\mathbb{E}[\alpha_{ent}\log\pi(a|s) - Q(s,a)]$ (`sac_policy_loss`)
''',
    '''
from vla_rl_lib.offline.cql import CQLTrainer, cql_penalty, sac_policy_loss

show_source(cql_penalty)
''',
    '''trainer = CQLTrainer(obs_dim, action_dim, config=config, callbacks=[plot], cql_alpha=cql_alpha,
                     cql_samples=cql_samples, min_q_weight=min_q_weight)
''',
    q_fn_code("qf", "actor", True),
    "cql_alpha", "1,5,10")

TD3BC = offline_notebook(
    "04_td3_bc", "TD3+BC",
    "TD3+BC is TD3 with a behaviour-cloning term in the actor loss: the actor maximises Q but pays for moving "
    "away from the dataset's action. `alpha` sets the balance (0 is pure behaviour cloning). A minimal change "
    "to an online algorithm that works very well offline.",
    offline_params(num_epochs=4, steps_per_epoch=500, hidden_dim=64) + '''alpha = 2.5          # weight of the Q term: lambda is alpha / mean|Q|
noise_clip = 0.5
policy_delay = 2
''',
    r'''
## Key equations, next to the code that computes them

* Critic target (clipped double Q, target policy smoothing): $y = r + \gamma(1-d)\min_i Q_{\bar\theta_i}(s', \pi_{\bar\phi}(s') + \epsilon)$ (`td3_target`)
* Actor: $\pi = \arg\max_\pi \mathbb{E}\big[\lambda Q(s,\pi(s)) - (\pi(s)-a)^2\big]$ with $\lambda = \alpha / \mathbb{E}|Q|$ (`td3_bc_actor_loss`)
''',
    '''
from vla_rl_lib.offline.td3_bc import TD3BCTrainer, td3_bc_actor_loss, td3_target

show_source(td3_bc_actor_loss)
''',
    '''trainer = TD3BCTrainer(obs_dim, action_dim, config=config, callbacks=[plot], alpha=alpha,
                       noise_clip=noise_clip, policy_delay=policy_delay)
''',
    q_fn_code("critic", "policy", False),
    "alpha", "0.5,2.5,10")

DT_CRITIC = '''
# The Decision Transformer has no critic: its "prediction" is the return it is asked to obtain. The same
# diagnostic with gamma = 1 compares that target with the (undiscounted) return the policy actually gets.
def q_fn(obs, action):
    return float(trainer.policy.target_return)

diag = overestimation_diagnostic(trainer, q_fn, trainer.env_id, num_episodes=3 if smoke else 10, gamma=1.0,
                                 seed=seed + 20_000)
show_overestimation(diag)
'''

DT = offline_notebook(
    "05_decision_transformer", "Decision Transformer",
    "The Decision Transformer treats RL as sequence modelling: a causal transformer reads "
    "(return-to-go, state, action) triples and predicts the next action. Trained by plain supervised "
    "learning on the dataset; at test time you condition on the return you want, and after each step the "
    "return-to-go drops by the reward received.",
    offline_params(num_epochs=2, steps_per_epoch=400, batch_size=64, learning_rate="1e-3") + '''context_length = 10
n_layer = 1
n_head = 2
embed_dim = 32          # a small transformer learns Pendulum; the specification's 3 x 128 suits D4RL locomotion
target_return = None   # None: the best return in the dataset
warmup_steps = 100
''',
    r'''
## Key equations, next to the code that computes them

* Input tokens per timestep: $(\hat R_t, s_t, a_t)$ with $\hat R_t = \sum_{t'\ge t} r_{t'}$; loss $\mathbb{E}\big[\|a_t - \hat a_t\|^2\big]$ over the real (unpadded) steps (`dt_action_loss`)
''',
    '''
from vla_rl_lib.offline.decision_transformer import DecisionTransformerTrainer, dt_action_loss

show_source(dt_action_loss)
''',
    '''if smoke:
    context_length, n_layer, embed_dim, warmup_steps = 5, 1, 32, 10
trainer = DecisionTransformerTrainer(obs_dim, action_dim, config=config, callbacks=[plot],
                                     context_length=context_length, n_layer=n_layer, n_head=n_head,
                                     embed_dim=embed_dim, target_return=target_return, warmup_steps=warmup_steps)
''',
    DT_CRITIC,
    "context_length", "5,10,20")


# ------------------------------------------------------------------------------------------------
# online methods
# ------------------------------------------------------------------------------------------------
ONLINE_TRAIN = '''
t0 = time.time()
trainer.train()
train_seconds = time.time() - t0
print(f"{trainer.global_step} environment steps in {train_seconds:.1f} s; run directory {trainer.run_dir}")
'''


def online_notebook(name, title, intro, param_lines, equations_md, equations_code, build_code, knob, values,
                    extra_cells=()):
    return notebook([
        md(f"# {title}\n\n{intro}"),
        code(IMPORTS),
        params(PARAM_HEAD.format(name=name) + param_lines),
        md(SMOKE_NOTE),
        md(equations_md),
        code(equations_code),
        md("## Training, with the live plot\n\nThe reward panel shows the mean return of recent training "
           "episodes and of the evaluations; the others the losses with the specification's expected ranges."),
        code('''
from vla_rl_lib import RLConfig

out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(torch_threads)
plot = LivePlot(min_interval=2.0, save_path=out / "training.png")
''' + build_code + ONLINE_TRAIN),
        md("## The trained agent"),
        code(EVAL_VIDEO),
        *extra_cells,
        md(HEALTH_MD),
        code(health_code("online")),
        md("## Saving the run\n\n`metrics.json` is what `vla-rl sweep` reads into its summary."),
        code(write_metrics()),
        md(try_next(name, knob, values)),
    ])


PPO = online_notebook(
    "06_ppo", "PPO: Proximal Policy Optimization",
    "PPO collects a rollout with the current policy, estimates advantages with GAE, and then takes several "
    "epochs of minibatch steps on a *clipped* surrogate objective, which keeps the new policy close to the one "
    "that collected the data. Stable and general: the specification's first choice when you have a simulator.",
    '''
env = "CartPole-v1"
total_timesteps = 60_000
num_envs = 4
rollout_steps = 128        # per environment: one rollout holds rollout_steps * num_envs steps
ppo_epochs = 4
ppo_clip_range = 0.2
ppo_gae_lambda = 0.95
ppo_value_coef = 0.5
ppo_entropy_coef = 0.01
batch_size = 64
learning_rate = 3e-4
discount_gamma = 0.99
eval_episodes = 10
''',
    r'''
## Key equations, next to the code that computes them

* Ratio $r(\theta) = \pi_\theta(a|s) / \pi_{old}(a|s)$; loss $L = -\mathbb{E}\big[\min(r A,\ \mathrm{clip}(r, 1-\epsilon, 1+\epsilon) A)\big]$ (`clipped_surrogate`)
* GAE: $\hat A_t = \sum_l (\gamma\lambda)^l \delta_{t+l}$, $\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)$ (`compute_gae`)
* Value: $(V(s) - \hat R)^2$, optionally clipped (`value_loss`)
''',
    '''
from vla_rl_lib.online.ppo import PPOTrainer, clipped_surrogate, value_loss
from vla_rl_lib.online.rollout import compute_gae

show_source(clipped_surrogate)
ratio = torch.tensor([0.5, 1.0, 1.5]); adv = torch.ones(3)
print("ratios 0.5, 1.0, 1.5 with A = 1: the gain stops at 1 + eps ->", clipped_surrogate(ratio, adv, 0.2).item())
''',
    '''
if smoke:
    total_timesteps, rollout_steps, eval_episodes = 1024, 64, 2
config = RLConfig(algorithm="ppo", env=env, total_timesteps=total_timesteps, num_envs=num_envs,
                  rollout_steps=rollout_steps, ppo_epochs=ppo_epochs, ppo_clip_range=ppo_clip_range,
                  ppo_gae_lambda=ppo_gae_lambda, ppo_value_coef=ppo_value_coef, ppo_entropy_coef=ppo_entropy_coef,
                  batch_size=batch_size, learning_rate=learning_rate, discount_gamma=discount_gamma,
                  log_freq=rollout_steps * num_envs, eval_freq=max(total_timesteps // 5, 1), eval_episodes=eval_episodes,
                  save_freq=0, seed=seed, output_dir=str(out))
trainer = PPOTrainer(env=env, config=config, callbacks=[plot])
''',
    "ppo_clip_range", "0.1,0.2,0.3",
    extra_cells=(md("Step through the same episode frame by frame (the slider shows the action taken at each step):"),
                 code('''
from widgets import RolloutPlayer

player = RolloutPlayer(trainer, env, seed=seed, max_steps=50 if smoke else 500, show_video=False)
player
''')))

SAC = online_notebook(
    "07_sac", "SAC: Soft Actor-Critic",
    "SAC is off-policy: it keeps every transition in a replay buffer and reuses it many times, which makes it "
    "sample efficient. It maximises reward plus policy entropy, with the entropy temperature tuned "
    "automatically (`alpha='auto'`), and uses twin Q-networks with slowly-moving targets.",
    '''
env = "Pendulum-v1"
total_timesteps = 8_000
learning_starts = 1_000
buffer_size = 100_000
batch_size = 128
tau = 0.005
alpha = "auto"
learning_rate = 1e-3
discount_gamma = 0.99
hidden_dim = 64
eval_episodes = 5
''',
    r'''
## Key equations, next to the code that computes them

* Critic target: $y = r + \gamma(1-d)\big(\min_i Q_{\bar\theta_i}(s',a') - \alpha\log\pi(a'|s')\big)$, $a'\sim\pi(\cdot|s')$ (`sac_critic_target`)
* Actor: $\mathbb{E}\big[\alpha\log\pi(a|s) - \min_i Q_{\theta_i}(s,a)\big]$ (`sac_actor_loss`)
* Temperature: $-\log\alpha\,\mathbb{E}[\log\pi(a|s) + \bar{\mathcal H}]$ (`sac_temperature_loss`)
''',
    '''
from vla_rl_lib.online.sac import SACTrainer, sac_actor_loss, sac_critic_target, sac_temperature_loss

show_source(sac_critic_target)
''',
    '''
if smoke:
    total_timesteps, learning_starts, hidden_dim, eval_episodes = 400, 200, 64, 1
config = RLConfig(algorithm="sac", env=env, total_timesteps=total_timesteps, learning_starts=learning_starts,
                  buffer_size=buffer_size, batch_size=batch_size, tau=tau, alpha=alpha, learning_rate=learning_rate,
                  discount_gamma=discount_gamma, hidden_dim=hidden_dim, log_freq=200,
                  eval_freq=max(total_timesteps // 4, 1), eval_episodes=eval_episodes, save_freq=0, seed=seed,
                  output_dir=str(out))
trainer = SACTrainer(env=env, config=config, callbacks=[plot])
''',
    "tau", "0.002,0.005,0.02")

GRPO = online_notebook(
    "08_grpo", "GRPO: Group Relative Policy Optimization",
    "GRPO needs no critic. From one starting state it runs a *group* of rollouts, scores each by its return, "
    "and uses the return relative to the group (minus the group mean, over the group std) as the advantage of "
    "every step of that rollout. A KL penalty keeps the policy near a frozen reference. With several reward "
    "terms (safety, progress, comfort, lane keeping) each is normalised within the group and combined with "
    "weights, which is why the specification recommends it for multi-objective problems. Here: the kit's "
    "driving simulator, with a state-vector policy (the VLA version is in `09_vla_pipeline`).",
    '''
group_size = 4
num_groups = 4
num_iterations = 15
kl_coef = 0.1
clip_range = 0.2
grpo_epochs = 4
learning_rate = 3e-4
hidden_dim = 64
difficulty = "easy"
objective_weights = None   # e.g. {"collision": 1.0, "progress": 1.0, "jerk": 0.5, "lane": 0.5}
eval_episodes = 5
''',
    r'''
## Key equations, next to the code that computes them

* Group-relative advantage: $A_i = \dfrac{R_i - \mathrm{mean}(R_{1..G})}{\mathrm{std}(R_{1..G}) + \epsilon}$ (`group_relative_advantages`)
* Loss: $-\mathbb{E}\big[\min(r A, \mathrm{clip}(r,1-\epsilon,1+\epsilon)A)\big] + \beta\,\mathbb{E}[\mathrm{KL}_{k3}(\pi\,\|\,\pi_{ref})]$ (`grpo_loss`, `k3_kl`)
''',
    '''
from vla_rl_lib.online.grpo import GRPOTrainer, group_relative_advantages, grpo_loss, k3_kl

show_source(group_relative_advantages)
print("returns 1, 2, 3, 6 ->", group_relative_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0]])).numpy().round(2))
''',
    '''
from vla_rl_lib.envs import StateObservation, make_env

if smoke:
    num_groups, num_iterations, eval_episodes = 2, 1, 1
driving = StateObservation(make_env("driving", difficulty=difficulty, render_mode="rgb_array"))
config = RLConfig(algorithm="grpo", env="driving", group_size=group_size, num_groups=num_groups,
                  num_iterations=num_iterations, kl_coef=kl_coef, clip_range=clip_range, grpo_epochs=grpo_epochs,
                  learning_rate=learning_rate, hidden_dim=hidden_dim, objective_weights=objective_weights,
                  total_timesteps=10_000_000, log_freq=1, eval_freq=0, eval_episodes=eval_episodes, save_freq=0,
                  seed=seed, output_dir=str(out))
trainer = GRPOTrainer(env=driving, config=config, callbacks=[plot])
''',
    "kl_coef", "0.0,0.1,0.5")


NOTEBOOKS = {
    "02_iql": IQL,
    "03_cql": CQL,
    "04_td3_bc": TD3BC,
    "05_decision_transformer": DT,
    "06_ppo": PPO,
    "07_sac": SAC,
    "08_grpo": GRPO,
}


# ------------------------------------------------------------------------------------------------
# the other notebooks
# ------------------------------------------------------------------------------------------------
QUICKSTART = notebook([
    md("""
# Quickstart: online and offline RL in two minutes

Two real runs, each with a live reward plot and a video of the trained agent:

1. **Online RL**: PPO learns to balance CartPole by interacting with the simulator.
2. **Offline RL**: IQL learns to drive a point mass through a maze from a *fixed dataset* the kit
   ships (`maze-stitch-v0`: short hops between nearby cells, none of which goes from the start to the
   goal), without touching the environment during training. Behaviour cloning (BC) on the same data,
   with the same budget, is the yardstick: offline RL is worth it where it beats copying the data.

Then the specification's health table tells you whether each run trained well. The method notebooks
(`02_iql` ... `08_grpo`) explain each algorithm; `11_choosing_a_method` helps you pick one.
"""),
    code(IMPORTS),
    params(PARAM_HEAD.format(name="00_quickstart") + """
ppo_env = "CartPole-v1"
ppo_timesteps = 40_000
iql_dataset = "maze-stitch-v0"
iql_steps = 3_000
iql_hidden_dim = 64
eval_episodes = 10
"""),
    md(SMOKE_NOTE),
    md("## 1. PPO on CartPole (online)"),
    code("""
from vla_rl_lib import PPOTrainer, RLConfig

out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(torch_threads)
if smoke:
    ppo_timesteps, iql_steps, eval_episodes = 1024, 60, 1
ppo_plot = LivePlot(min_interval=2.0, save_path=out / "ppo_training.png", title="PPO on " + ppo_env)
ppo_config = RLConfig(env=ppo_env, total_timesteps=ppo_timesteps, num_envs=4, rollout_steps=128,
                      log_freq=512, eval_freq=max(ppo_timesteps // 4, 1), eval_episodes=eval_episodes,
                      save_freq=0, seed=seed, output_dir=str(out / "ppo"))
ppo = PPOTrainer(env=ppo_env, config=ppo_config, callbacks=[ppo_plot])
t0 = time.time()
ppo.train()
ppo_seconds = time.time() - t0
ppo_results = ppo.evaluate(num_episodes=eval_episodes, video_path=out / "ppo_rollout.mp4")
print(f"PPO: {ppo.global_step} steps in {ppo_seconds:.0f} s, evaluation mean reward {ppo_results['mean_reward']:.1f} (500 is perfect)")
show_video(out / "ppo_rollout.mp4", caption="PPO on CartPole")
"""),
    code("""
ppo_health = metric_health(final_metrics(ppo_plot.logs), "online")
show_health(ppo_health)
"""),
    md("""## 2. IQL against behaviour cloning on a shipped dataset (offline)

The maze's data are hops of one to three cells between random cells; the evaluation starts at S
and the goal G is ten cells away along the corridor, so the agent must *stitch* pieces of different
hops together. IQL's value function chains them (the settings are the IQL paper's for its sparse
antmaze tasks: expectile 0.9, temperature 10; `tau=0.05` lets the goal's value travel the corridor
within a few thousand steps). BC copies hops that go both ways."""),
    code("""
from vla_rl_lib import BCTrainer, IQLTrainer, OfflineRLConfig, OfflineReplayBuffer, load_dataset

data = load_dataset(iql_dataset)
obs_dim, action_dim = data["observations"].shape[1], data["actions"].shape[1]
buffer = OfflineReplayBuffer(obs_dim, action_dim).load_dataset(data)
iql_plot = LivePlot(min_interval=2.0, save_path=out / "iql_training.png", title="IQL on " + iql_dataset)
steps_per_epoch = max(iql_steps // 4, 1)
iql_config = OfflineRLConfig(num_epochs=4, steps_per_epoch=steps_per_epoch, hidden_dim=iql_hidden_dim,
                             normalize_states=True, tau=0.05,
                             log_freq=max(steps_per_epoch // 5, 1),
                             eval_freq=1, eval_episodes=eval_episodes, save_freq=0, seed=seed,
                             output_dir=str(out / "iql"))
iql = IQLTrainer(obs_dim, action_dim, config=iql_config, callbacks=[iql_plot], expectile=0.9, temperature=10.0)
t0 = time.time()
iql.train(buffer)
iql_seconds = time.time() - t0
iql_results = iql.evaluate(num_episodes=eval_episodes, video_path=out / "iql_rollout.mp4")
show_video(out / "iql_rollout.mp4", caption="IQL in the maze, learned from the dataset only")

# the yardstick: behaviour cloning, same data, same steps, same network width
bc = BCTrainer(obs_dim, action_dim, config=iql_config.replace(eval_freq=0, output_dir=str(out / "bc")))
bc.train(buffer)
bc_results = bc.evaluate(num_episodes=eval_episodes)
print(f"IQL: {iql.global_step} gradient steps in {iql_seconds:.0f} s. From a start that no trajectory in the data "
      f"connects to the goal, IQL reached the goal in {100 * iql_results['success_rate']:.0f}% of "
      f"{eval_episodes} episodes (return {iql_results['mean_reward']:.1f}) and behaviour cloning, trained on the same "
      f"data for the same {bc.global_step} steps, in {100 * bc_results['success_rate']:.0f}% "
      f"(return {bc_results['mean_reward']:.1f}).")
"""),
    code("""
iql_health = metric_health(final_metrics(iql_plot.logs), "offline")
show_health(iql_health)
"""),
    md("## Saving the run"),
    code("""
ppo_plot.save(out / "ppo_training.png"); iql_plot.save(out / "iql_training.png")
metrics_path = write_run_metrics(
    out, smoke=smoke,
    ppo=dict(evaluation={k: v for k, v in ppo_results.items() if k != "video"}, train_seconds=ppo_seconds,
             steps=ppo.global_step, health={r["metric"]: r["healthy"] for r in ppo_health}),
    iql=dict(evaluation={k: v for k, v in iql_results.items() if k != "video"}, train_seconds=iql_seconds,
             steps=iql.global_step, health={r["metric"]: r["healthy"] for r in iql_health}),
    bc=dict(evaluation=bc_results, steps=bc.global_step))
print("wrote", metrics_path)
for f in sorted(out.iterdir()):
    print("  ", f)
"""),
    md("""
## Where next

* `01_datasets`: what is in a D4RL-style dataset; `02_iql` ... `08_grpo`: one method each.
* `11_choosing_a_method`: the specification's decision tree as a widget, and the methods side by side.
* Batch runs: `vla-rl run-notebook notebooks/00_quickstart.ipynb -p smoke true --output runs/quick`.
"""),
])

DATASETS = notebook([
    md("""
# Datasets: what offline RL learns from

Offline RL uses D4RL-format datasets: flat arrays of `observations`, `actions`, `rewards`, `terminals`
(the episode really ended) and `timeouts` (cut by a time limit), plus optional `images` and `instructions`
for vision-language tasks. The kit ships small ones and makes others with `vla-rl make-dataset`; real
D4RL files are read from `~/.d4rl/datasets` when present.

The **quality** of a dataset decides which method suits it (the specification's decision tree: expert ->
IQL/CQL, mixed -> TD3+BC, diverse -> DT). The explorer below shows the numbers behind that judgement.
"""),
    code(IMPORTS + """
from vla_rl_lib.data import available_datasets, format_summary, load_dataset, summarize_dataset
from widgets import DatasetExplorer
from widgets.dataset_explorer import summary_figure
from IPython.display import Image
"""),
    params(PARAM_HEAD.format(name="01_datasets") + """
datasets = "pendulum-medium-v0,hopper-medium-v0,driving-expert-v1"   # comma-separated names or paths
"""),
    md("## Which datasets are on this machine"),
    code("""
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
for name, path in sorted(available_datasets().items()):
    print(f"{name:28s} {path}")
"""),
    md("## Return and length histograms, action ranges, quality"),
    code("""
summaries = {}
for name in [d.strip() for d in datasets.split(",") if d.strip()]:
    data = load_dataset(name)
    s = summarize_dataset(data)
    summaries[name] = s
    print(format_summary(s), end="\\n\\n")
    png = out / f"{Path(name).stem}.png"
    summary_figure(s).savefig(png, dpi=90)
    display(Image(filename=str(png)))
    if "images" in data:
        # replay the first episode's camera images as a video
        from vla_rl_lib.video import write_video
        end = int(np.flatnonzero(np.asarray(data["terminals"]) | np.asarray(data["timeouts"]))[0]) + 1
        video = write_video(list(data["images"][:end]), out / f"{Path(name).stem}_episode.mp4", fps=10)
        show_video(video, caption=f"{name}: first episode, instruction {data['instructions'][0]!r}")
"""),
    md("## The explorer widget\n\nPick any dataset (or type a path) and press Load."),
    code("""
explorer = DatasetExplorer(next(iter(summaries)))
explorer
"""),
    md("## Saving the numbers"),
    code("""
def plain(s):
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in s.items()
            if k not in ("episode_returns", "episode_lengths")}

metrics_path = write_run_metrics(out, smoke=smoke, datasets={n: plain(s) for n, s in summaries.items()})
print("wrote", metrics_path)
"""),
])

VLA = notebook([
    md("""
# The VLA pipeline: behaviour cloning (stage 2), then RL (stage 3)

A vision-language-action model reads a camera image and an instruction ("turn left at the intersection")
and outputs an action. The specification's recipe:

* **Stage 2**: behaviour cloning of expert demonstrations (`driving-expert-v1`) trains the action head.
* **Stage 3**: reinforcement learning improves the policy. Option A, offline (IQL on the demonstrations);
  option B, online (PPO in the simulator). Here: option B, PPO with `VLAPolicy(model)`, exactly the
  specification's "VLA-Specific RL Training".

The kit's driving simulator is small and fast, so all of this runs on a laptop CPU.
"""),
    code(IMPORTS),
    params(PARAM_HEAD.format(name="09_vla_pipeline") + """
dataset = "driving-expert-v1"
bc_epochs = 5
bc_steps_per_epoch = 200
bc_batch_size = 64
bc_learning_rate = 1e-3
ppo_timesteps = 8_192
ppo_learning_rate = 1e-4
difficulty = "easy"
success_episodes = 10      # held-out episodes per instruction for the success rate
"""),
    md(SMOKE_NOTE),
    md("## Stage 2: behaviour cloning"),
    code("""
from vla_rl_lib import OfflineRLConfig, OfflineReplayBuffer, load_dataset
from vla_rl_lib.vla.bc import BCTrainer, bc_mse_loss
from vla_rl_lib.vla.pipeline import evaluate_success

out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(torch_threads)
if smoke:
    bc_epochs, bc_steps_per_epoch, bc_batch_size, ppo_timesteps, success_episodes = 1, 20, 16, 256, 1
show_source(bc_mse_loss)
data = load_dataset(dataset)
obs_dim, action_dim = data["observations"].shape[1], data["actions"].shape[1]
buffer = OfflineReplayBuffer(obs_dim, action_dim).load_dataset(data)
bc_plot = LivePlot(min_interval=2.0, save_path=out / "bc_training.png", title="Stage 2: behaviour cloning")
bc_config = OfflineRLConfig(num_epochs=bc_epochs, steps_per_epoch=bc_steps_per_epoch, batch_size=bc_batch_size,
                            learning_rate=bc_learning_rate, eval_freq=0, eval_episodes=0 if smoke else 5,
                            log_freq=max(bc_steps_per_epoch // 4, 1), save_freq=0, seed=seed,
                            output_dir=str(out / "stage2_action_head"))
bc = BCTrainer(obs_dim, action_dim, config=bc_config, callbacks=[bc_plot])
t0 = time.time()
bc.train(buffer)
bc_seconds = time.time() - t0
print(f"stage 2: {bc.global_step} steps in {bc_seconds:.0f} s; model saved in {bc.best_model_path}")
"""),
    code("""
from vla_rl_lib import VLAModel, VLAPolicy

model = VLAModel.from_pretrained(bc.best_model_path)
stage2 = evaluate_success(VLAPolicy(model), episodes_per_instruction=success_episodes, difficulty=difficulty)
print("stage 2 success rate", stage2["success_rate"], stage2["per_instruction"])
"""),
    md("## Stage 3: PPO with the VLA as the policy"),
    code("""
from vla_rl_lib import PPOTrainer, RLConfig

ppo_plot = LivePlot(min_interval=2.0, save_path=out / "training.png", title="Stage 3: PPO on the driving simulator")
ppo_config = RLConfig(env="driving", total_timesteps=ppo_timesteps, num_envs=4, rollout_steps=64 if smoke else 256,
                      learning_rate=ppo_learning_rate, batch_size=64, log_freq=256, eval_freq=0,
                      eval_episodes=2 if smoke else 5, save_freq=0, seed=seed, output_dir=str(out / "stage3_ppo"))
trainer = PPOTrainer(env="driving", policy=VLAPolicy(model), config=ppo_config, callbacks=[ppo_plot])
t0 = time.time()
trainer.train()
ppo_seconds = time.time() - t0
stage3 = evaluate_success(trainer.policy, episodes_per_instruction=success_episodes, difficulty=difficulty)
print(f"stage 3: {trainer.global_step} steps in {ppo_seconds:.0f} s; success rate {stage3['success_rate']:.2f} "
      f"(stage 2: {stage2['success_rate']:.2f})")
"""),
    md("## The agent, instruction by instruction"),
    code("""
results = trainer.evaluate(num_episodes=2 if smoke else 5, video_path=out / "rollout.mp4")
show_video(out / "rollout.mp4", caption="stage 3 policy on the driving simulator")
from widgets import RolloutPlayer

player = RolloutPlayer(trainer, "driving", seed=seed, max_steps=40 if smoke else 200, show_video=False)
player
"""),
    md(HEALTH_MD),
    code("""
final = final_metrics(ppo_plot.logs)
health = metric_health(final, "online")
show_health(health)
"""),
    code("""
train_seconds = bc_seconds + ppo_seconds
metrics_path = write_run_metrics(out, trainer, results, final, health, smoke=smoke, train_seconds=train_seconds,
                                 stage2_success=stage2, stage3_success=stage3)
ppo_plot.save(out / "training.png")
print("wrote", metrics_path)
"""),
])

OFFLINE_TO_ONLINE = notebook([
    md("""
# Offline to online: start from IQL, fine-tune with PPO

The specification's "Combining Offline and Online RL": train IQL on a dataset, then hand its policy
to PPO and fine-tune in the environment at a *lower learning rate*, so the online phase starts from a
competent policy instead of from scratch. The hand-off is just a policy object
(`PPOTrainer(env, policy=iql_trainer.policy, config=...)`).
"""),
    code(IMPORTS),
    params(PARAM_HEAD.format(name="10_offline_to_online") + """
dataset = "pendulum-medium-v0"
offline_steps = 3_000
online_timesteps = 20_000
online_learning_rate = 1e-5     # lower learning rate for fine-tuning, as the specification does
eval_episodes = 5
"""),
    md(SMOKE_NOTE),
    md("## Step 1: IQL on the dataset"),
    code("""
from vla_rl_lib import IQLTrainer, OfflineRLConfig, OfflineReplayBuffer, PPOTrainer, RLConfig, load_dataset

out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(torch_threads)
if smoke:
    offline_steps, online_timesteps, eval_episodes = 60, 512, 1
data = load_dataset(dataset)
obs_dim, action_dim = data["observations"].shape[1], data["actions"].shape[1]
buffer = OfflineReplayBuffer(obs_dim, action_dim).load_dataset(data)
offline_plot = LivePlot(min_interval=2.0, save_path=out / "offline_training.png", title="Step 1: IQL")
spe = max(offline_steps // 4, 1)
iql = IQLTrainer(obs_dim, action_dim, callbacks=[offline_plot],
                 config=OfflineRLConfig(num_epochs=4, steps_per_epoch=spe, log_freq=max(spe // 5, 1), eval_freq=2,
                                        hidden_dim=128, normalize_states=True,
                                        eval_episodes=eval_episodes, save_freq=0, seed=seed, output_dir=str(out / "iql")))
t0 = time.time()
iql.train(buffer)
offline_seconds = time.time() - t0
offline_results = iql.evaluate(num_episodes=eval_episodes)
print("after IQL:", round(offline_results["mean_reward"], 1))
"""),
    md("## Step 2: PPO fine-tuning from the IQL policy"),
    code("""
online_plot = LivePlot(min_interval=2.0, save_path=out / "training.png", title="Step 2: PPO from the IQL policy")
online_config = RLConfig(env=iql.env_id, total_timesteps=online_timesteps, num_envs=4, rollout_steps=128,
                         learning_rate=online_learning_rate, log_freq=512, eval_freq=max(online_timesteps // 4, 1),
                         eval_episodes=eval_episodes, save_freq=0, seed=seed, output_dir=str(out / "ppo"))
trainer = PPOTrainer(env=iql.env_id, policy=iql.policy, config=online_config, callbacks=[online_plot])
t0 = time.time()
trainer.train()
train_seconds = time.time() - t0
results = trainer.evaluate(num_episodes=eval_episodes, video_path=out / "rollout.mp4")
print(f"after IQL: {offline_results['mean_reward']:.1f}; after PPO fine-tuning: {results['mean_reward']:.1f}")
show_video(out / "rollout.mp4", caption="IQL policy fine-tuned with PPO")
"""),
    md(HEALTH_MD),
    code("""
final = final_metrics(online_plot.logs)
health = metric_health(final, "online")
show_health(health)
offline_health = metric_health(final_metrics(offline_plot.logs), "offline")
show_health(offline_health)
"""),
    code("""
metrics_path = write_run_metrics(out, trainer, results, final, health, smoke=smoke, train_seconds=train_seconds,
                                 offline_seconds=offline_seconds,
                                 offline_evaluation={k: v for k, v in offline_results.items() if k != "video"})
online_plot.save(out / "training.png")
print("wrote", metrics_path)
"""),
])

CHOOSING = notebook([
    md("""
# Choosing a method

The specification's decision tree ("When to Use Each Method") as a widget, its comparison table, and
then the methods run side by side on the same task (Pendulum: offline methods on the shipped
`pendulum-medium-v0` dataset, online methods in the simulator), so you can check the table's claims.
"""),
    code(IMPORTS + """
from vla_rl_lib.chooser import comparison_table, recommend_method
from widgets import MethodChooser, comparison_html
"""),
    params(PARAM_HEAD.format(name="11_choosing_a_method") + """
dataset = "pendulum-medium-v0"
offline_methods = "iql,cql,td3_bc,dt"
online_methods = "sac,ppo"
offline_steps = 2_000          # gradient steps per offline method
online_timesteps = 6_000       # environment steps per online method
batch_size = 256
hidden_dim = 256
dt_embed_dim = 64              # a small transformer keeps the Decision Transformer's CPU time near the others
dt_n_layer = 2
eval_episodes = 5
"""),
    md("## The decision tree\n\nAnswer the questions; the widget recommends a method and shows its notebook's parameters."),
    code("""
chooser = MethodChooser()
chooser
"""),
    code("""
print("no environment, expert data ->", recommend_method(False, dataset_quality="expert"))
print("simulator, sample efficiency matters ->", recommend_method(True, goal="sample_efficient"))
display(HTML(comparison_html()))
"""),
    md("## Side by side on the same data"),
    code("""
from vla_rl_lib import OfflineRLConfig, OfflineReplayBuffer, RLConfig, load_dataset
from vla_rl_lib.trainer import get_trainer_class

out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(torch_threads)
if smoke:
    offline_steps, online_timesteps, eval_episodes, batch_size, hidden_dim, dt_embed_dim, dt_n_layer = 30, 300, 1, 64, 64, 32, 1
data = load_dataset(dataset)
obs_dim, action_dim = data["observations"].shape[1], data["actions"].shape[1]
buffer = OfflineReplayBuffer(obs_dim, action_dim).load_dataset(data)
env_id = buffer.env_id
rows, trainers = [], {}
for name in [m.strip() for m in offline_methods.split(",") if m.strip()]:
    cls = get_trainer_class(name)
    cfg = OfflineRLConfig(num_epochs=1, steps_per_epoch=offline_steps, log_freq=max(offline_steps // 10, 1),
                          batch_size=batch_size, hidden_dim=hidden_dim, normalize_states=True, eval_episodes=0,
                          save_freq=0, seed=seed,
                          output_dir=str(out / name))
    extra = dict(warmup_steps=min(500, offline_steps // 10), context_length=10, embed_dim=dt_embed_dim,
                 n_layer=dt_n_layer) if name == "dt" else {}
    trainer = cls(obs_dim, action_dim, config=cfg, **extra)
    t0 = time.time(); trainer.train(buffer); seconds = time.time() - t0
    res = trainer.evaluate(num_episodes=eval_episodes)
    rows.append(dict(method=name, type="offline", steps=trainer.global_step, seconds=seconds, **res))
    trainers[name] = trainer
    print(f"{name:7s} {res['mean_reward']:9.1f}  ({seconds:.0f} s)")
for name in [m.strip() for m in online_methods.split(",") if m.strip()]:
    cls = get_trainer_class(name)
    cfg = RLConfig(algorithm=name, env=env_id, total_timesteps=online_timesteps,
                   hidden_dim=hidden_dim if name == "sac" else None,
                   learning_starts=min(1000, online_timesteps // 4), num_envs=1 if name == "sac" else 4,
                   rollout_steps=128, log_freq=max(online_timesteps // 10, 1), eval_freq=0, eval_episodes=0,
                   save_freq=0, seed=seed, output_dir=str(out / name))
    trainer = cls(env=env_id, config=cfg)
    t0 = time.time(); trainer.train(); seconds = time.time() - t0
    res = trainer.evaluate(num_episodes=eval_episodes)
    rows.append(dict(method=name, type="online", steps=trainer.global_step, seconds=seconds, **res))
    trainers[name] = trainer
    print(f"{name:7s} {res['mean_reward']:9.1f}  ({seconds:.0f} s)")
"""),
    code("""
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 3))
ax.bar([r["method"] for r in rows], [r["mean_reward"] for r in rows],
       color=["tab:blue" if r["type"] == "offline" else "tab:orange" for r in rows])
ax.set_ylabel("evaluation mean reward")
ax.set_title(f"{env_id}: offline (blue, {offline_steps} gradient steps) vs online (orange, {online_timesteps} env steps)")
fig.tight_layout()
fig.savefig(out / "training.png", dpi=90)
plt.show()
table = "| method | type | steps | seconds | mean reward | normalised score |\\n|---|---|---|---|---|---|\\n" + "\\n".join(
    f"| {r['method']} | {r['type']} | {r['steps']} | {r['seconds']:.0f} | {r['mean_reward']:.1f} | "
    f"{r.get('normalized_score', float('nan')):.1f} |" for r in rows)
display(Markdown(table))
"""),
    md("## The best of them, in action"),
    code("""
best = max(rows, key=lambda r: r["mean_reward"])
trainer = trainers[best["method"]]
results = trainer.evaluate(num_episodes=1, video_path=out / "rollout.mp4")
show_video(out / "rollout.mp4", caption=f"best here: {best['method']}")
metrics_path = write_run_metrics(out, smoke=smoke, best=best["method"],
                                 methods={r["method"]: {k: v for k, v in r.items() if isinstance(v, (int, float))}
                                          for r in rows})
print("wrote", metrics_path)
"""),
])

COMPARISON = notebook([
    md("""
# Offline methods side by side: where offline RL beats copying the data

BC, %BC (the best 10% of episodes), IQL, CQL, TD3+BC and the Decision Transformer, trained with the
same budget on three kinds of data the kit ships:

* **expert** (`pendulum-expert-v0`): one good policy;
* **mixed** (`pendulum-medium-expert-v0`, D4RL's `medium-expert`): a mediocre and a good policy;
* **stitching** (`maze-stitch-v0`): short hops between nearby cells of a maze; the evaluation goes from
  S to G, which no single trajectory in the data does.

Each run is `vla_rl_lib.comparison.run_method`; the same function backs the learning tests
(`tests/test_offline_separation.py`) and `benchmarks/offline_comparison.py`, whose measurement ships with
the kit and feeds the method chooser (`vla_rl_lib.chooser.measured_note`).
"""),
    code(IMPORTS + """
import matplotlib.pyplot as plt
from IPython.display import Image

from vla_rl_lib.chooser import QUALITIES as TREE, measured_note
from vla_rl_lib.comparison import COMPARISON_DATASETS, compare_methods, make_trainer, summarize
"""),
    params(PARAM_HEAD.format(name="12_offline_method_comparison") + """
methods = "bc,%bc,iql,cql,td3_bc,dt"
seeds = "0,1"                  # the table's spread is over these
steps = 3_000                  # gradient steps of every MLP method
dt_steps = 1_000               # the (small) Decision Transformer's steps
hidden_dim = 64
eval_episodes = 10
"""),
    md(SMOKE_NOTE + "\nThe full run took 19.5 minutes on one core of a loaded 2-core machine (CQL is the slow one)."),
    code("""
out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(torch_threads)
if smoke:
    seeds, steps, dt_steps, eval_episodes = "0", 40, 20, 1
kinds = dict(COMPARISON_DATASETS)
t0 = time.time()
rows = compare_methods(methods.split(","), list(kinds.values()), [int(s) for s in seeds.split(",")],
                       {"*": steps, "dt": dt_steps}, eval_episodes=eval_episodes, hidden_dim=hidden_dim, progress=True)
print(f"{len(rows)} runs in {time.time() - t0:.0f} s")
"""),
    md("## The table: mean ± std over seeds (success rate in the maze, return on Pendulum)"),
    code("""
returns = summarize(rows, "mean_reward")
success = summarize(rows, "success_rate")
table = "| data | " + " | ".join(methods.split(",")) + " |\\n|---|" + "---|" * len(methods.split(",")) + "\\n"
for kind, dataset in kinds.items():
    stats = success[dataset] if kind == "stitching" else returns[dataset]
    fmt = "{:.2f} ± {:.2f}" if kind == "stitching" else "{:.0f} ± {:.0f}"
    table += f"| {kind}: `{dataset}` | " + " | ".join(fmt.format(*stats[m][:2]) for m in methods.split(",")) + " |\\n"
display(Markdown(table))
"""),
    code("""
fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.4))
for ax, (kind, dataset) in zip(axes, kinds.items()):
    stats = success[dataset] if kind == "stitching" else returns[dataset]
    names = methods.split(",")
    ax.bar(names, [stats[m][0] for m in names], yerr=[stats[m][1] for m in names], capsize=3,
           color=["#999999" if m in ("bc", "%bc") else "#3b75af" for m in names])
    ax.set_title(f"{kind}: {dataset}", fontsize=9)
    ax.set_ylabel("success rate" if kind == "stitching" else "return")
    ax.tick_params(axis="x", labelsize=8)
fig.tight_layout()
fig.savefig(out / "comparison.png", dpi=90)
plt.close(fig)
display(Image(filename=str(out / "comparison.png")))
"""),
    md("""## The decision tree beside the measurement

The specification's tree: expert data -> IQL (or CQL); mixed -> TD3+BC; diverse -> Decision Transformer.
Below, for each kind of data, the tree's pick and what this run measured; then the same sentence from
the measurement that ships with the kit (what the method chooser shows)."""),
    code("""
tree_kind = {"expert": "expert", "mixed": "mixed", "stitching": "diverse"}
for kind, dataset in kinds.items():
    stats = success[dataset] if kind == "stitching" else returns[dataset]
    best = max(stats, key=lambda m: stats[m][0])
    pick = TREE[tree_kind[kind]]
    print(f"{kind:9s} tree: {pick:7s} measured best: {best:7s} ({stats[best][0]:.2f}); tree's pick: {stats[pick][0]:.2f}")
    print("          shipped measurement:", measured_note(tree_kind[kind]))
"""),
    md("## The stitching result, watched: IQL from S to G"),
    code("""
iql, buffer = make_trainer("iql", kinds["stitching"], steps, seed=0, hidden_dim=hidden_dim, output_dir=str(out / "iql"))
iql.train(buffer)
iql_eval = iql.evaluate(num_episodes=eval_episodes, video_path=out / "iql_maze.mp4")
show_video(out / "iql_maze.mp4", caption=f"IQL in the maze: success rate {iql_eval['success_rate']:.2f}")
"""),
    code("""
metrics = {f"{r['dataset']}/{r['method']}/seed{r['seed']}/mean_reward": r["mean_reward"] for r in rows}
write_run_metrics(out, smoke=smoke, evaluation={"mean_reward": iql_eval["mean_reward"],
                                                "success_rate": iql_eval["success_rate"]},
                  runs=rows, returns={d: {m: v[0] for m, v in ms.items()} for d, ms in returns.items()})
print("wrote", out / "metrics.json")
"""),
])


def critic_free_notebook() -> nbformat.NotebookNode:
    """13: PPO with a value head against critic-free GRPO and RLOO, from one behaviour-cloned VLA."""
    return notebook([
        md("""
# Critic-free RL for a VLA: GRPO and RLOO against PPO

Three online methods improve the same behaviour-cloned vision-language-action model on the driving
simulator, at equal environment steps:

* **PPO** with a value head on the VLA's own features (RL4VLA finds this beats GRPO on ManiSkill);
* **GRPO** with SimpleVLA-RL's options: a 0/1 success reward, dynamic sampling (groups whose rollouts
  all score the same are dropped and resampled), an asymmetric "clip-higher" ratio bound, no KL term;
* **RLOO** (RIPT-VLA's LOOP): the same, with leave-one-out baselines instead of group normalisation.

A GRPO group is `group_size` worlds of the batched simulator reset with one seed and stepped in
lock-step. The success rate is measured on held-out seeds, deterministic actions. Then each GRPO option
is switched off (or on) one at a time, and multi-objective GRPO shows how objective weights trade
collisions against progress. `benchmarks/vla_critic_free.py` runs the same comparison over seeds
(figures in `docs/benchmarks.md`, section VLA).
"""),
        code(IMPORTS),
        params(PARAM_HEAD.format(name="13_critic_free_vla") + """
steps = 61_440             # environment steps per method, the same for all (benchmarks/vla.py's budget)
curve_points = 4           # the success rate is measured this many times along the way
success_episodes = 20      # held-out episodes per instruction
demo_size = 5_000          # expert transitions for stage 2 (behaviour cloning)
bc_steps = 1_500
image_size = 32
toggles = ["return", "no_dynamic", "symmetric", "kl", "token"]  # GRPO options switched one at a time
"""),
        md(SMOKE_NOTE),
        md("## Stage 2: one behaviour-cloned model for every method"),
        code("""
from vla_rl_lib import OfflineRLConfig, OfflineReplayBuffer, RLConfig
from vla_rl_lib.envs.driving import INSTRUCTIONS, STATE_DIM
from vla_rl_lib.envs.expert import collect_dataset
from vla_rl_lib.vla.bc import PROPRIO_INDICES, BCTrainer
from vla_rl_lib.vla.model import VLAConfig
from vla_rl_lib.vla.pipeline import (CRITIC_FREE_LOG_STD, CRITIC_FREE_RECIPES, SuccessCurve, evaluate_success,
                                     grpo_from_model, ppo_from_model, set_exploration)

out = Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(torch_threads)
torch.manual_seed(seed)
groups = {}
if smoke:
    steps, curve_points, success_episodes, demo_size, bc_steps = 2_048, 2, 1, 600, 30
    groups = dict(num_groups=2)  # smaller iterations, so the tiny budget still sees two of them
demos = collect_dataset(demo_size, seed=seed, image_size=image_size)
model_cfg = VLAConfig(image_size=image_size, vision_channels=[8, 16, 16], embed_dim=32, hidden_dim=64,
                      state_indices=list(PROPRIO_INDICES))
bc = BCTrainer(STATE_DIM, 2, OfflineRLConfig(num_epochs=1, steps_per_epoch=bc_steps, batch_size=128, learning_rate=1e-3,
                                             eval_freq=0, eval_episodes=0, save_freq=0, log_freq=100, seed=seed,
                                             output_dir=str(out / "stage2_action_head")), model=model_cfg)
bc.train(OfflineReplayBuffer(STATE_DIM, 2).load_dataset(demos))
model_path = bc.best_model_path
stage2 = evaluate_success(bc.policy, success_episodes, seed=1_000_000, image_size=image_size)
print(f"stage 2 success rate {stage2['success_rate']:.2f}", stage2["per_instruction"])
"""),
        md(r"""
## Key equations, next to the code that computes them

* GRPO advantage: $A_i = (R_i - \mathrm{mean}_j R_j) / (\mathrm{std}_j R_j + \epsilon)$ (`group_relative_advantages`)
* RLOO advantage: $A_i = R_i - \frac{1}{K-1}\sum_{j \ne i} R_j$ (`leave_one_out_advantages`)
* clip-higher: $\min(r A,\ \mathrm{clip}(r, 1-\epsilon_{low}, 1+\epsilon_{high}) A)$ (`clipped_objective`)
* dynamic sampling keeps group $g$ unless all its scores are equal (`informative_groups`)
"""),
        code("""
from vla_rl_lib.online.grpo import (clipped_objective, group_relative_advantages, informative_groups,
                                   leave_one_out_advantages)

show_source(leave_one_out_advantages)
scores = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])  # two groups of 0/1 outcomes
print("GRPO:", group_relative_advantages(scores)[0].tolist(), " RLOO:", leave_one_out_advantages(scores)[0].tolist())
print("informative groups:", informative_groups(scores).tolist())
"""),
        md("## PPO (value head), GRPO and RLOO at equal environment steps"),
        code("""
import matplotlib.pyplot as plt

budgets = [steps * (k + 1) // curve_points for k in range(curve_points)]


def run(method, callbacks=(), **options):
    \"\"\"Train one method from the stage-2 model for `steps` env steps; the success rate at each budget.\"\"\"
    common = dict(env="driving", total_timesteps=steps, eval_episodes=0, eval_freq=0, save_freq=0, log_freq=2_048,
                  seed=seed, output_dir=str(out / method))
    if method == "ppo":
        trainer = ppo_from_model(model_path, config=RLConfig(num_envs=16, rollout_steps=128, batch_size=256,
                                                             ppo_entropy_coef=0.0, ppo_normalize_reward=True, **common))
    else:
        recipe = {**CRITIC_FREE_RECIPES[method.split("-")[0]], **groups, **options}
        trainer = grpo_from_model(model_path, config=RLConfig(algorithm="grpo", num_iterations=10**6, **common, **recipe))
        set_exploration(trainer, CRITIC_FREE_LOG_STD)
    curve = SuccessCurve(budgets, success_episodes, image_size=image_size)
    t0 = time.time()
    trainer.train(callbacks=[curve, *callbacks])
    print(f"{method}: {trainer.global_step} steps in {time.time() - t0:.0f} s, success "
          + ", ".join(f"{100 * r['success_rate']:.0f}%" for _, _, r in curve.scores))
    return trainer, curve.scores


plot = LivePlot(min_interval=2.0, save_path=out / "training.png", title="GRPO on the driving simulator")
runs = {}
for method in ("ppo", "grpo", "rloo"):
    runs[method] = run(method, callbacks=[plot] if method == "grpo" else [])
trainer = runs["grpo"][0]

fig, ax = plt.subplots(figsize=(6, 3.5))
for method, (_, scores) in runs.items():
    ax.plot([0] + [s for _, s, _ in scores], [100 * stage2["success_rate"]] + [100 * r["success_rate"] for _, _, r in scores],
            marker="o", label=method)
ax.set_xlabel("environment steps"); ax.set_ylabel("success on held-out seeds (%)"); ax.legend(); ax.grid(alpha=0.3)
fig.savefig(out / "success_curves.png", dpi=100, bbox_inches="tight")
plt.show()
"""),
        md("## Per instruction, at the end of the budget"),
        code("""
rows = {"BC (stage 2)": stage2, **{m: scores[-1][2] for m, (_, scores) in runs.items()}}
table = "| method | " + " | ".join(INSTRUCTIONS) + " | collisions |\\n|---|" + "---:|" * (len(INSTRUCTIONS) + 1) + "\\n"
for name, r in rows.items():
    table += f"| {name} | " + " | ".join(f"{100 * r['per_instruction'][i]:.0f}%" for i in INSTRUCTIONS)
    table += f" | {100 * r['collision_rate']:.0f}% |\\n"
display(Markdown(table))
"""),
        md("""
## The GRPO options, one at a time

Each row is the GRPO recipe with one option changed: `return` scores rollouts by their shaped return
instead of success, `no_dynamic` keeps every group, `symmetric` clips the ratio at 1 ± 0.2, `kl` adds the
k3 KL to the stage-2 model (β = 0.1), `token` uses one ratio per action dimension.
"""),
        code("""
changes = {"return": dict(grpo_reward="return"), "no_dynamic": dict(dynamic_sampling=False),
           "symmetric": dict(clip_range_high=None), "kl": dict(kl_coef=0.1), "token": dict(token_level_ratios=True)}
ablation = {"grpo (recipe)": runs["grpo"][1][-1][2]["success_rate"]}
for name in toggles:
    ablation[name] = run(f"grpo-{name}", **changes[name])[1][-1][2]["success_rate"]
display(Markdown("| GRPO variant | success |\\n|---|---:|\\n"
                 + "".join(f"| {k} | {100 * v:.0f}% |\\n" for k, v in ablation.items())))
"""),
        md("""
## Multi-objective GRPO: the weights change what is learned

With `objective_weights` the rollouts are scored by the simulator's reward terms, each normalised within
its group and then weighted. Weighting safety trades progress for fewer collisions, and the reverse.
"""),
        code("""
objectives = {"safety first": {"safety": 1.0, "progress": 0.1}, "progress first": {"safety": 0.1, "progress": 1.0}}
mo = {name: run("grpo", grpo_reward="return", objective_weights=w)[1][-1][2] for name, w in objectives.items()}
display(Markdown("| weights | collisions | metres driven | success |\\n|---|---:|---:|---:|\\n" + "".join(
    f"| {k} | {100 * r['collision_rate']:.0f}% | {r['mean_progress']:.1f} | {100 * r['success_rate']:.0f}% |\\n"
    for k, r in mo.items())))
"""),
        md("## The GRPO agent"),
        code("""
results = trainer.evaluate(num_episodes=1 if smoke else 5, video_path=out / "rollout.mp4")
show_video(out / "rollout.mp4", caption="GRPO after training (deterministic policy)")
plot.save(out / "training.png")
metrics_path = write_run_metrics(out, trainer, results, smoke=smoke, stage2_success=stage2["success_rate"],
                                 success={m: [r["success_rate"] for _, _, r in s] for m, (_, s) in runs.items()},
                                 budgets=budgets, ablation=ablation,
                                 objectives={k: {"collision_rate": r["collision_rate"], "mean_progress": r["mean_progress"]}
                                             for k, r in mo.items()})
print("wrote", metrics_path)
"""),
    ])


NOTEBOOKS.update({
    "12_offline_method_comparison": COMPARISON,
    "00_quickstart": QUICKSTART,
    "01_datasets": DATASETS,
    "09_vla_pipeline": VLA,
    "10_offline_to_online": OFFLINE_TO_ONLINE,
    "11_choosing_a_method": CHOOSING,
    "13_critic_free_vla": critic_free_notebook(),
})


def build_all() -> dict[str, nbformat.NotebookNode]:
    return dict(NOTEBOOKS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that notebooks/ matches the sources")
    parser.add_argument("names", nargs="*", help="only these notebooks (stems)")
    args = parser.parse_args(argv)
    books = build_all()
    if args.names:
        books = {k: v for k, v in books.items() if k in args.names}
    NB_DIR.mkdir(exist_ok=True)
    stale = []
    for stem, nb in sorted(books.items()):
        path = NB_DIR / f"{stem}.ipynb"
        text = nbformat.writes(nb) + "\n"
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print("wrote", path.relative_to(ROOT))
    if stale:
        print("out of date (run python scripts/make_notebooks.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

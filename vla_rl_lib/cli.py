"""The ``vla-rl`` command line (also ``python -m vla_rl_lib``).

    vla-rl train iql --dataset hopper-medium-v2 --num_epochs 100 --expectile 0.7 --output_dir ./output/iql
    vla-rl train ppo --env CartPole-v1 --total_timesteps 100000 --use-wandb
    vla-rl evaluate ./output/iql/checkpoint.pt --num_episodes 10
    vla-rl resume ./output/iql
    vla-rl make-dataset --env Hopper-v5 --quality medium --size 1000000 --output hopper_medium.hdf5
    vla-rl run-notebook notebooks/02_iql.ipynb -p expectile 0.9 --output runs/iql_0.9
    vla-rl sweep notebooks/02_iql.ipynb --grid expectile=0.5,0.7,0.9 --seeds 0,1,2 --output runs/sweep

Flags of ``train`` are generated from ``OfflineRLConfig`` / ``RLConfig`` and the algorithm's
hyperparameters, with the specification's names (underscores; dashes work too). Every user error
ends in one line on stderr and a non-zero exit status, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from vla_rl_lib.errors import ConfigError, VLARLError

_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf$|^-nan$")
OFFLINE = ("iql", "cql", "td3_bc", "dt", "bc", "vla_bc")
ONLINE = ("ppo", "sac", "grpo")


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line (no usage dump) and exits with status 2.

    Negative numbers in exponent form (``--learning_rate -1e-3``, ``-p lr -1e-3``) are values, not
    options: argparse's own pattern misses the exponent and would answer "expected one argument"
    instead of letting the range check say what is wrong (no flag of the kit looks like a number).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _algorithm_names() -> list[str]:
    from vla_rl_lib.trainer import ALGORITHMS

    return list(ALGORITHMS)


def _add_train_parser(sub, algo: str, required: bool = False) -> None:
    from vla_rl_lib.trainer import get_trainer_class

    try:
        cls = get_trainer_class(algo)
    except ImportError as exc:
        if required:
            raise VLARLError(f"algorithm {algo!r} could not be loaded: {exc}") from None
        return  # listed in --help only when importable
    doc = (cls.__doc__ or "").strip().splitlines()
    p = sub.add_parser(algo, help=doc[0] if doc else algo, description=(cls.__doc__ or "").strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    config_cls = cls.config_class
    skip = ("algorithm",)
    config_cls.add_arguments(p, skip=skip, defaults=_cli_defaults(cls))
    if cls.Hyperparameters is not None:
        config_names = {f["name"] for f in config_cls.field_info()}
        cls.Hyperparameters.add_arguments(p, skip=tuple(config_names))
    g = p.add_argument_group("run")
    g.add_argument("--use_wandb", "--use-wandb", dest="use_wandb", action="store_true",
                   help="also log to Weights & Biases (offline mode without network; needs `pip install wandb`)")
    g.add_argument("--config", dest="config_file", metavar="FILE",
                   help="YAML/JSON file with config and hyperparameter values (flags override it)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --output_dir (by default train refuses; `vla-rl resume` continues it)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.set_defaults(algo=algo, trainer_cls=cls)


#: command-line defaults that differ from the config's (the specification's pipeline paths)
ALGO_CLI_DEFAULTS = {"vla_bc": {"dataset": "driving-expert-v1", "output_dir": "./output/stage2_action_head"}}


def _cli_defaults(cls) -> dict:
    """Defaults shown in --help: the config's, with the algorithm's usual values filled in."""
    from vla_rl_lib.config import RLConfig

    defaults = dict(ALGO_CLI_DEFAULTS.get(cls.algorithm, {}))
    if cls.config_class is RLConfig:
        defaults.update(RLConfig._ALGO_DEFAULTS.get(cls.algorithm, {}))
    return defaults


def build_parser(algorithms: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="vla-rl", description="Reinforcement learning for vision-language-action policies.",
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    from vla_rl_lib import __version__

    parser.add_argument("--version", action="version", version=f"vla-rl-kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    train = sub.add_parser("train", help="train an algorithm (offline: iql cql td3_bc dt bc vla_bc; online: ppo sac grpo)",
                           description="Train an algorithm. `vla-rl train ALGO --help` lists every flag.")
    train_sub = train.add_subparsers(dest="algo", metavar="ALGO", parser_class=_Parser)
    train_sub.required = True
    for algo in (algorithms or _algorithm_names()):
        _add_train_parser(train_sub, algo, required=algorithms is not None)

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint")
    ev.add_argument("checkpoint", help="checkpoint file or run directory")
    ev.add_argument("--num_episodes", "--num-episodes", type=int, default=10)
    ev.add_argument("--env", default=None, help="environment id (default: the one the run used)")
    ev.add_argument("--seed", type=int, default=None)
    ev.add_argument("--video", default=None, metavar="PATH", help="also record one episode to this mp4")
    ev.add_argument("--stochastic", action="store_true", help="sample actions instead of the deterministic action")

    rs = sub.add_parser("resume", help="continue a run from its last checkpoint")
    rs.add_argument("run_dir", help="run directory (holds checkpoint.pt) or checkpoint file")
    rs.add_argument("--dataset", default=None, help="offline: dataset to use if the run's is elsewhere now")
    rs.add_argument("--no-progress", dest="progress", action="store_false")

    md = sub.add_parser("make-dataset", help="generate a D4RL-layout dataset (random/medium/expert/...)")
    md.add_argument("--env", required=True, help="gymnasium id (Hopper-v5, Pendulum-v1, ...), 'driving' or 'maze'")
    md.add_argument("--quality", required=True, help="random, medium, expert, medium-replay or medium-expert; "
                    "driving also 'mixed'; the maze: stitch, stitch-dense or mixed")
    md.add_argument("--size", type=int, default=1_000_000, help="number of transitions")
    md.add_argument("--output", default=None, help="output .hdf5 path (default: ./datasets/<name>.hdf5)")
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--sac_steps", "--sac-steps", type=int, default=None,
                    help="environment steps of the SAC training that makes the expert (default: per env)")

    rn = sub.add_parser("run-notebook", help="execute a notebook with papermill into a run directory")
    rn.add_argument("notebook")
    rn.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    rn.add_argument("--output", default=None, help="run directory (default: runs/<notebook name>)")

    sw = sub.add_parser("sweep", help="run a notebook over a parameter grid and seeds")
    sw.add_argument("notebook")
    sw.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...")
    sw.add_argument("--seeds", default="0", help="comma-separated seeds")
    sw.add_argument("--workers", type=int, default=1)
    sw.add_argument("--output", default=None, help="sweep directory (default: runs/sweep_<notebook name>)")
    sw.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    sw.add_argument("--backend", choices=("local", "ray"), default="local")
    sw.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")

    qs = sub.add_parser("quickstart", help="the kit's main job: run notebooks/00_quickstart.ipynb with papermill")
    qs.add_argument("--output", default="runs/quickstart", help="run directory")
    qs.add_argument("--smoke", action="store_true", help="a tiny run that only checks everything works (under a minute)")
    qs.add_argument("--notebook", default=None, help="the quickstart notebook (default: notebooks/00_quickstart.ipynb)")

    asg = sub.add_parser("assignments", help="course assignments: release student versions, grade submissions")
    asg_sub = asg.add_subparsers(dest="assignments_command", metavar="ACTION", parser_class=_Parser)
    asg_sub.required = True
    rel = asg_sub.add_parser("release", help="write student versions (solutions replaced by stubs)")
    rel.add_argument("--source", default="notebooks/assignments")
    rel.add_argument("--output", required=True)
    gr = asg_sub.add_parser("grade", help="grade SUBMISSIONS_DIR/<student>/<assignment>.ipynb")
    gr.add_argument("submissions")
    gr.add_argument("--output", default="grades.csv")
    gr.add_argument("--source", default="notebooks/assignments", help="the instructor's assignment notebooks")
    gr.add_argument("--timeout", type=int, default=600, help="wall-clock seconds per notebook (CPU time: twice that)")
    gr.add_argument("--cell_timeout", "--cell-timeout", type=int, default=None,
                    help="seconds per cell and per call of a student's function (default: timeout/4, at least 10)")
    gr.add_argument("--memory_mb", "--memory-mb", type=int, default=8192, help="address-space limit per submission")
    gr.add_argument("--disk_mb", "--disk-mb", type=int, default=1024,
                    help="size of each of the sandbox's two writable in-memory folders")
    gr.add_argument("--trust-submissions", "--trust_submissions", dest="trust_submissions", action="store_true",
                    help="grade even where the bubblewrap sandbox cannot be set up (submissions then run with your rights)")
    return parser


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------

def _split_values(args: argparse.Namespace, cls) -> tuple[dict, dict]:
    values = {k: v for k, v in vars(args).items() if k not in ("command", "algo", "trainer_cls", "use_wandb",
                                                               "config_file", "progress", "overwrite")}
    if args.config_file:
        values = {**read_config_file(args.config_file), **values}
    values = {**ALGO_CLI_DEFAULTS.get(cls.algorithm, {}), **values}
    config_names = {f["name"] for f in cls.config_class.field_info()}
    config_values = {k: v for k, v in values.items() if k in config_names}
    hparam_values = {k: v for k, v in values.items() if k not in config_names}
    return config_values, hparam_values


def read_config_file(path: str) -> dict:
    """The values of a ``--config`` YAML/JSON file (a mapping, optionally split into config: and hparams:)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file" if not file.exists() else f"--config {path} is not a file")
    try:
        loaded = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"--config {path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path} could not be read ({exc})") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path} holds a YAML {type(loaded).__name__}, not a mapping; write one "
                          "`name: value` per line (or the config:/hparams: sections of a run's config.yaml)")
    if "config" in loaded:
        parts = [loaded.get("config") or {}, loaded.get("hparams") or {}]
        if not all(isinstance(p, dict) for p in parts):
            raise ConfigError(f"--config {path}: its config: and hparams: sections must be mappings")
        loaded = {**parts[0], **parts[1]}
    return loaded


def _claim_output_dir(config, overwrite: bool) -> None:
    """Before any data loads: --output_dir must be a writable folder that holds no other run."""
    from vla_rl_lib.checkpoint import check_writable_dir, clear_run, existing_run, with_article

    check_writable_dir(config.output_dir, "--output_dir")
    other = existing_run(config.output_dir)
    if other is not None and not overwrite:
        raise ConfigError(f"--output_dir {config.output_dir} already holds {with_article(other)}; continue it with "
                          f"`vla-rl resume {config.output_dir}`, replace it with --overwrite, or choose another --output_dir")
    if other is not None:
        clear_run(config.output_dir)
        print(f"--overwrite: removed {with_article(other)} from {config.output_dir}")


def _cmd_train(args: argparse.Namespace) -> int:
    cls = args.trainer_cls
    config_values, hparams = _split_values(args, cls)
    if cls.config_class.__name__ == "RLConfig":
        config_values["algorithm"] = args.algo
    config = cls.config_class.from_dict(config_values)
    _claim_output_dir(config, args.overwrite)
    if args.algo in OFFLINE:
        from vla_rl_lib.data.buffer import OfflineReplayBuffer
        from vla_rl_lib.data.hdf5 import validate_dataset
        from vla_rl_lib.data.datasets import load_dataset

        if not config.dataset:
            raise VLARLError(f"vla-rl train {args.algo} needs --dataset (a D4RL name such as hopper-medium-v2, "
                             "a Minari id, an .hdf5 path, or a kit dataset such as pendulum-medium-v0)")
        data = load_dataset(config.dataset)
        checked = validate_dataset(data, source=config.dataset)
        obs_dim = int(checked["observations"].shape[1])
        action_dim = int(checked["actions"].shape[1]) if checked["actions"].ndim > 1 else 1
        buffer = OfflineReplayBuffer(obs_dim, action_dim).load_dataset(data)
        trainer = cls(obs_dim=obs_dim, action_dim=action_dim, config=config, use_wandb=args.use_wandb,
                      progress_bar=args.progress, **_model_policy(cls, config, obs_dim=obs_dim), **hparams)
        trainer.train(buffer)
    else:
        trainer = cls(env=config.env, config=config, use_wandb=args.use_wandb, progress_bar=args.progress,
                      **_model_policy(cls, config), **hparams)
        trainer.train()
    _report(trainer)
    return 130 if trainer.interrupted else 0


def _model_policy(cls, config, obs_dim=None) -> dict:
    """``{"policy": VLAPolicy}`` for ``--model_path`` (built here, at the top: trainers load no models), else ``{}``."""
    if not getattr(config, "model_path", None):
        return {}
    from vla_rl_lib.vla.pipeline import policy_for_config, takes_model_policy

    if cls.__module__.startswith("vla_rl_lib.vla."):
        return {}  # the stage-2 trainers read config.model_path themselves
    if not takes_model_policy(cls):
        raise ConfigError(f"--model_path starts iql, ppo or grpo from a saved VLA; {cls.algorithm} takes no given policy")
    return {"policy": policy_for_config(config, obs_dim=obs_dim)}


def _open_checkpoint(checkpoint, **overrides):
    """``Trainer.from_checkpoint``, with the policy of a ``--model_path`` run rebuilt at the top."""
    from vla_rl_lib.vla.pipeline import from_checkpoint

    return from_checkpoint(checkpoint, **overrides)


def _report(trainer) -> None:
    ev = trainer.last_evaluation or {}
    parts = [f"{trainer.algorithm}: {trainer.global_step} steps"]
    for key in ("mean_reward", "std_reward", "normalized_score", "success_rate"):
        if key in ev:
            parts.append(f"{key}={ev[key]:.3f}")
    print("; ".join(parts))
    print(f"run directory: {trainer.run_dir.resolve()}  (config.yaml, metrics.csv, tb/, checkpoint.pt)")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    trainer = _open_checkpoint(args.checkpoint)
    results = trainer.evaluate(num_episodes=args.num_episodes, env=args.env, seed=args.seed,
                               deterministic=not args.stochastic, video_path=args.video)
    print(json.dumps(results, indent=2))
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from vla_rl_lib.checkpoint import load_checkpoint, trainer_meta

    path = Path(args.run_dir)
    run_dir = path if path.is_dir() else path.parent
    checkpoint = path / "checkpoint.pt" if path.is_dir() else path
    overrides = {"output_dir": str(run_dir)}
    if args.dataset:
        overrides["dataset"] = args.dataset
    meta = trainer_meta(load_checkpoint(checkpoint), checkpoint)
    trainer = _open_checkpoint(checkpoint, **overrides)
    trainer.progress_bar = args.progress
    print(f"resuming {meta['algorithm']} at step {trainer.global_step} of {trainer.total_steps} in {run_dir}")
    trainer.train()
    _report(trainer)
    return 130 if trainer.interrupted else 0


def _cmd_make_dataset(args: argparse.Namespace) -> int:
    from vla_rl_lib.data.generate import make_dataset

    kwargs = {"sac_steps": args.sac_steps} if args.sac_steps else {}
    path = make_dataset(args.env, args.quality, args.size, args.output, seed=args.seed, **kwargs)
    print(f"wrote {path}")
    return 0


def _cmd_run_notebook(args: argparse.Namespace) -> int:
    from vla_rl_lib.checkpoint import check_writable_dir
    from vla_rl_lib.notebook import describe_run, parse_parameters, run_notebook

    output = args.output or f"runs/{Path(args.notebook).stem}"
    check_writable_dir(output, "--output")
    path = run_notebook(args.notebook, parse_parameters(args.parameter), output, progress_bar=True)
    print(describe_run(path))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from vla_rl_lib.checkpoint import check_writable_dir
    from vla_rl_lib.notebook import parse_grid, parse_parameters, sweep

    try:
        seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r} must be comma-separated integers, e.g. 0,1,2") from None
    output = args.output or f"runs/sweep_{Path(args.notebook).stem}"
    check_writable_dir(output, "--output")
    summary = sweep(args.notebook, parse_grid(args.grid), seeds=seeds, workers=args.workers, output_dir=output,
                    parameters=parse_parameters(args.parameter), backend=args.backend, address=args.address)
    print(f"sweep summary: {summary}")
    if summary.failed:
        names = ", ".join(row["run"] for row in summary.failed)
        print(f"vla-rl sweep: error: {len(summary.failed)} of {len(summary.rows)} runs failed: {names} "
              f"(errors in {summary.csv_path}; rerun the same command to retry only those)", file=sys.stderr)
        return 1
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from vla_rl_lib.quickstart import quickstart

    quickstart(args.output, smoke=args.smoke, notebook=args.notebook)
    return 0


def _cmd_assignments(args: argparse.Namespace) -> int:
    from vla_rl_lib.exercises import grading

    if args.assignments_command == "release":
        written = grading.release(args.source, args.output)
        print(f"wrote {len(written)} student notebooks to {args.output}")
    else:
        path = grading.grade(args.submissions, args.output, timeout=args.timeout, source=args.source,
                             trust_submissions=args.trust_submissions, cell_timeout=args.cell_timeout,
                             memory_mb=args.memory_mb, disk_mb=args.disk_mb)
        print(f"grades written to {path}")
    return 0


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "resume": _cmd_resume,
            "make-dataset": _cmd_make_dataset, "run-notebook": _cmd_run_notebook, "sweep": _cmd_sweep,
            "quickstart": _cmd_quickstart, "assignments": _cmd_assignments}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    algorithms = None
    if len(argv) >= 2 and argv[0] == "train" and not argv[1].startswith("-"):
        # build only the parser of the requested algorithm: fast, and an unknown name gets one clear line
        from vla_rl_lib.trainer import ALGORITHMS, ALIASES

        name = ALIASES.get(argv[1].lower().replace("-", "_"), argv[1].lower().replace("-", "_"))
        if name not in ALGORITHMS:
            print(f"vla-rl train: error: unknown algorithm {argv[1]!r}; choose one of {', '.join(ALGORITHMS)}",
                  file=sys.stderr)
            return 2
        argv[1] = name
        algorithms = [name]
    try:
        parser = build_parser(algorithms)
    except VLARLError as exc:
        print(f"vla-rl: error: {exc}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except VLARLError as exc:
        print(f"vla-rl {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file system refusal (permissions, read-only, disk full): one line, not a traceback
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"vla-rl {args.command}: error: {exc.strerror or exc}{where}; check the path and its permissions",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""Run untrusted code (a student's submission) in a bubblewrap sandbox, under limits, and end all of it.

The sandbox (Debian's ``bubblewrap``) gets new user, PID, network, IPC, UTS and cgroup namespaces:
no network, its own process tree, no capabilities. Its file system holds only the system's
programs and libraries, the Python installation, the kit's own package (read-only), a private
``/tmp``, and two read-write folders: the fresh copy of the submission's folder and the folder the
answers are written to. Other submissions, the solution notebooks, the grades and the rest of the
home and project folders are not there at all.

Limits: CPU time, address space (memory) and file size (``setrlimit``, inherited by every process
inside), and wall-clock time. When the worker ends, or its time is up, the sandbox's process group
is killed; the sandbox's first process is PID 1 of its PID namespace, and when it dies the kernel
kills every process left in the namespace, detached ones included.
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import vla_rl_lib

KIT = Path(vla_rl_lib.__file__).resolve().parent
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
             "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/mime.types")


@dataclass
class Limits:
    wall_seconds: float = 600.0
    cpu_seconds: int = 1200
    memory_mb: int = 8192
    file_mb: int = 512

    def apply(self) -> None:  # runs in the child between fork and exec
        os.setsid()
        for which, value in ((resource.RLIMIT_CPU, self.cpu_seconds), (resource.RLIMIT_AS, self.memory_mb * 2**20),
                             (resource.RLIMIT_FSIZE, self.file_mb * 2**20), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(which, (value, value))


def _read_only_roots() -> list[str]:
    """Where Python, its packages and the kit live (bound read-only into the sandbox)."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             str(Path(sys.executable).resolve().parent.parent)}
    return sorted(r for r in roots if r and Path(r).is_dir() and r != "/")


def bwrap_command(argv: list[str], work: Path, io: Path, env: dict) -> list[str]:
    """The ``bwrap`` command line that runs ``argv`` with ``work`` as its folder and ``io`` for answers."""
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--uid", "65534", "--gid", "65534", "--hostname", "grading"]
    for path in SYSTEM_DIRS + ETC_FILES:
        if os.path.lexists(path):
            cmd += ["--ro-bind", path, path] if not os.path.islink(path) or path.startswith("/etc") else \
                   ["--symlink", os.readlink(path), path]
    for root in _read_only_roots():
        cmd += ["--ro-bind", root, root]
    cmd += ["--ro-bind", str(KIT), "/kit/vla_rl_lib", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--bind", str(work), "/submission", "--bind", str(io), "/grading", "--chdir", "/submission",
            "--clearenv"]
    for key, value in {**env, "PYTHONPATH": "/kit", "HOME": "/tmp", "PATH": "/usr/local/bin:/usr/bin:/bin"}.items():
        cmd += ["--setenv", key, str(value)]
    return cmd + argv


def unavailable_reason(must_not_expose: tuple[Path, ...] = ()) -> Optional[str]:
    """None when the sandbox works here; otherwise why not (bubblewrap missing, namespaces refused, ...)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    for root in [*_read_only_roots(), str(KIT)]:
        for secret in must_not_expose:
            if secret.resolve().is_relative_to(Path(root).resolve()):
                return f"{secret} lies inside {root}, which the sandbox must show to the submission"
    probe = Path(os.environ.get("TMPDIR", "/tmp"))
    try:
        result = subprocess.run(bwrap_command([sys.executable, "-c", "import vla_rl_lib"], probe, probe, {}),
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not be started ({exc})"
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()
        return f"bubblewrap could not make a sandbox here ({tail[-1] if tail else result.returncode})"
    return None


def run(argv: list[str], work: Path, io: Path, env: dict, limits: Limits, sandboxed: bool, log: Path) -> Optional[str]:
    """Run ``argv`` (sandboxed, or only under limits when trusted); None, or why it did not finish.

    Every process it started is killed before this returns: the whole sandbox when sandboxed, the
    process group (which a process that starts its own session escapes) when trusted.
    """
    if sandboxed:
        cmd, cwd, child_env = bwrap_command(argv, work, io, env), None, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    else:
        cmd, cwd = argv, work
        child_env = {**{k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "LANG")}, **env,
                     "HOME": str(work)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=child_env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=limits.apply)
        try:
            proc.wait(timeout=limits.wall_seconds)
            problem = None if proc.returncode == 0 else _exit_reason(proc.returncode)
        except subprocess.TimeoutExpired:
            problem = f"timed out after {limits.wall_seconds:g} s"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return problem


def _exit_reason(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (CPU-time limit)" if name == "SIGXCPU" else " (killed)" if name == "SIGKILL" else ""
        return f"the notebook's process ended by signal {name}{hint}"
    return f"the notebook's process exited with status {code} before answering"

"""Run untrusted code (a student's submission) in a bubblewrap sandbox, under limits, and end all of it.

The sandbox (Debian's ``bubblewrap``) gets new user, PID, network, IPC, UTS and cgroup namespaces:
no network, its own process tree, no capabilities. Its file system holds, read-only, only the
system's programs and libraries, the Python installation, the kit's own package, the job file and
the fresh copy of the submission's folder (at ``/original``); the only writable places are two
size-limited in-memory file systems, ``/submission`` (where the worker copies the folder and runs)
and ``/tmp``. Other submissions, the solution notebooks, the grades and the rest of the home and
project folders are not there at all, and nothing the submission writes reaches the disk.

The one way out is a pipe: the command gets, as its last argument, the number of a file
descriptor whose bytes come back to the caller (at most ``answers_cap``); its output is drained
and only a short tail kept.

Limits: CPU time, address space (memory) and file size (``setrlimit``, inherited by every process
inside), disk (the in-memory file systems' size) and wall-clock time. When the worker ends, or its
time is up, the sandbox's process group is killed; the sandbox's first process is PID 1 of its PID
namespace, and when it dies the kernel kills every process left in the namespace, detached ones
included.
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
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
    disk_mb: int = 1024  # each of /submission and /tmp (sandboxed only)

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


def bwrap_command(argv: list[str], original: Path, job: Path, env: dict, disk_mb: int = 1024) -> list[str]:
    """The ``bwrap`` command line that runs ``argv`` with ``original`` (read-only) and ``job`` visible."""
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--uid", "65534", "--gid", "65534", "--hostname", "grading"]
    for path in SYSTEM_DIRS + ETC_FILES:
        if os.path.lexists(path):
            cmd += ["--ro-bind", path, path] if not os.path.islink(path) or path.startswith("/etc") else \
                   ["--symlink", os.readlink(path), path]
    size = str(int(disk_mb) * 2**20)
    cmd += ["--size", size, "--tmpfs", "/tmp"]  # first: a Python installation under /tmp is bound on top of it
    for root in _read_only_roots():
        cmd += ["--ro-bind", root, root]
    cmd += ["--ro-bind", str(KIT), "/kit/vla_rl_lib", "--proc", "/proc", "--dev", "/dev",
            "--size", size, "--tmpfs", "/submission",
            "--ro-bind", str(original), "/original", "--ro-bind", str(job), "/grading/job.json",
            "--remount-ro", "/", "--chdir", "/submission", "--clearenv"]
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
        result = subprocess.run(bwrap_command([sys.executable, "-c", "import vla_rl_lib"], probe, Path(__file__), {}),
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not be started ({exc})"
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()
        return f"bubblewrap could not make a sandbox here ({tail[-1] if tail else result.returncode})"
    return None


@dataclass
class Outcome:
    problem: Optional[str]   # None, or why the command did not finish normally
    answers: bytes           # what it wrote to its answers descriptor
    overflow: bool           # it wrote more than the cap
    log_tail: str            # the end of its output


class _Drain(threading.Thread):
    """Read a pipe to its end, keeping the first (or last) ``cap`` bytes: the writer never blocks."""

    def __init__(self, fd: int, cap: int, tail: bool = False):
        super().__init__(daemon=True)
        self.fd, self.cap, self.tail, self.data, self.overflow = fd, cap, tail, bytearray(), False
        self.start()

    def run(self) -> None:
        with open(self.fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                if self.tail:
                    self.data += chunk
                    del self.data[:-self.cap]
                    continue
                room = self.cap - len(self.data)
                self.data += chunk[:room]
                self.overflow = self.overflow or len(chunk) > room


def run(argv: list[str], work: Path, job: Path, env: dict, limits: Limits, sandboxed: bool,
        answers_cap: int = 64 * 2**20) -> Outcome:
    """Run ``argv`` + [answers fd] (sandboxed, or only under limits when trusted) and collect its answers.

    Every process it started is killed before this returns: the whole sandbox when sandboxed, the
    process group (which a process that starts its own session escapes) when trusted.
    """
    answers_r, answers_w = os.pipe()
    output_r, output_w = os.pipe()
    argv = [*argv, str(answers_w)]
    if sandboxed:
        cmd, cwd = bwrap_command(argv, work, job, env, limits.disk_mb), None
        child_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    else:
        cmd, cwd = argv, work
        child_env = {**{k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "LANG")}, **env,
                     "HOME": str(work)}
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=child_env, stdin=subprocess.DEVNULL, stdout=output_w,
                                stderr=output_w, pass_fds=(answers_w,), preexec_fn=limits.apply)
    finally:
        os.close(answers_w)
        os.close(output_w)
    answers, output = _Drain(answers_r, answers_cap), _Drain(output_r, 4096, tail=True)
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
    for drain in (answers, output):
        drain.join(timeout=10)  # at once when sandboxed: every writer died with the sandbox
    return Outcome(problem, bytes(answers.data), answers.overflow, output.data.decode(errors="replace"))


def _exit_reason(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (CPU-time limit)" if name == "SIGXCPU" else " (killed)" if name == "SIGKILL" else ""
        return f"the notebook's process ended by signal {name}{hint}"
    return f"the notebook's process exited with status {code} before answering"

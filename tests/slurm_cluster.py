"""A private single-node SLURM cluster for tests: munged, slurmctld and slurmd under one temp dir.

The sbatch templates are only trustworthy if they run under a real scheduler: requeue, signals,
`srun` steps and `--open-mode=append` are SLURM's behaviour, not ours to imitate. This starts the
Debian packages' daemons (`.ci/install_slurm.sh`) with a config of their own (private ports,
state, spool, pid and log files in the temp dir; no systemd, no cgroups, no accounting), so it
runs beside a real installation without touching it. Needs root, as the daemons run as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
# Debian puts the daemons in /usr/sbin, which is not on every user's PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])


def missing_tools() -> list[str]:
    """The SLURM/munge programs that are not installed (empty when a cluster can start)."""
    return [tool for tool in TOOLS if shutil.which(tool, path=SEARCH_PATH) is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


class SlurmCluster:
    """One node called `localhost` in partition `debug`; clients use `env` (it sets SLURM_CONF)."""

    def __init__(self, cpus: int = 2, root: Path | None = None) -> None:
        self.cpus = cpus
        # mkdtemp is 0700; munged insists every directory above its socket is executable by all.
        self.root = Path(root or tempfile.mkdtemp(prefix="gan_hr-slurm-"))
        self.root.chmod(0o755)
        self.conf = self.root / "slurm.conf"
        self.log_dir = self.root / "log"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": SEARCH_PATH}
        self._procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> None:
        """Start munged, slurmctld and slurmd; return once the node is idle."""
        missing = missing_tools()
        if missing:
            raise RuntimeError(f"SLURM is not installed (missing {', '.join(missing)}); run .ci/install_slurm.sh")
        try:
            self._start_munge()
            self._write_conf()
            self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", str(self.conf)])
            self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)])
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancel this cluster's jobs, stop the daemons by pid and remove the temp dir."""
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            # A job's slurmstepd outlives slurmd, so jobs must end before the daemons do.
            self.run("scancel", "--user", "root", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                active = self.run("squeue", "-h", "-t", "configuring,running,completing", check=False)
                if not active.stdout.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "SlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients

    def run(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run a SLURM client (sbatch, squeue, ...) against this cluster."""
        result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def job_state(self, job_id: str) -> str:
        """The job's state (PENDING, RUNNING, COMPLETED, ...) as scontrol reports it."""
        fields = self.job_fields(job_id)
        return fields.get("JobState", "UNKNOWN")

    def job_fields(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (JobState, RestartCnt, ExitCode, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        fields = {}
        for item in out.split():
            if "=" in item:
                key, value = item.split("=", 1)
                fields[key] = value
        return fields

    def wait_state(self, job_id: str, states: set[str], timeout: float) -> str:
        """Poll until the job reaches one of `states`; raises TimeoutError with the logs."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.job_state(job_id)
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state} after {timeout:.0f} s\n{self.logs()}")
            time.sleep(0.5)

    def logs(self, lines: int = 40) -> str:
        """The daemons' log tails, for failure messages."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    # ------------------------------------------------------------------ internals

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.log_dir.mkdir(exist_ok=True)
        out = open(self.log_dir / f"{name}.stdout.log", "ab")
        self._procs[name] = subprocess.Popen(
            argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # keep the test's Ctrl-C / signals away from the daemons
        )
        out.close()

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        munge.mkdir(mode=0o755)
        munge.chmod(0o755)
        key = munge / "munge.key"
        if shutil.which("mungekey", path=SEARCH_PATH):
            subprocess.run(["mungekey", "-c", "-k", str(key)], env=self.env, check=True, capture_output=True)
        else:  # munge before 0.5.14 has no mungekey; any 1 KiB of random bytes is a key
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, os.urandom(1024))
            os.close(fd)
        self._spawn("munged", [
            "munged", "-F", "--socket", str(self.munge_socket), "--key-file", str(key),
            "--pid-file", str(munge / "munged.pid"), "--log-file", str(self.log_dir / "munged.log"),
            "--seed-file", str(munge / "munged.seed"),
        ])
        deadline = time.monotonic() + 15
        while not self.munge_socket.exists():
            if self._procs["munged"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start\n{self.logs()}")
            time.sleep(0.05)

    def _write_conf(self) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir()
        memory = max(512, int(_memory_mb() * 0.8))
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=gan_hr_test",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # A requeued job may start once its old credential expires (BeginTime = now +
            # cred_expire + 1): 10 s instead of SLURM's 120.
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            # The node is what this file says, whatever the machine is: no drain on a mismatch.
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            # Schedule within a second or two (the default main-loop interval is a minute).
            "SchedulerParameters=sched_interval=1,bf_interval=1",
            # Keep finished jobs visible to scontrol, so tests can read their exit codes.
            "MinJobAge=600",
            # SIGTERM to SIGKILL when a job is cancelled: teardown takes seconds, not 30.
            "KillWait=5",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd.log'}",
            f"PlugStackConfig={r / 'plugstack.conf'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))
        (r / "plugstack.conf").write_text("")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.logs()}")
            state = self.run("sinfo", "-h", "-n", "localhost", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"node not idle after {timeout:.0f} s (state {state!r})\n{self.logs()}")
            time.sleep(0.2)

"""A real SLURM cluster for the tests: Debian's munged, slurmctld and two slurmd (``slurmd -N``) on this host.

Everything (key, config, state, spool, logs, sockets) lives in one folder; ports are chosen free. Only root
can start slurmd, so elsewhere :func:`missing` names what is lacking and the tests skip with that reason.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue", "srun")
NODES = ("node1", "node2")
CPUS_PER_NODE = 2
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE"}


def missing() -> str | None:
    """Why no cluster can start here, or None."""
    absent = [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if absent:
        return (f"SLURM is not installed ({', '.join(absent)} not found): "
                "apt-get install munge slurmctld slurmd slurm-client")
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    return None


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: each socket stays bound until all are, or the OS may hand one port out twice
    (slurmctld then refuses to start: "SlurmctldPort == SlurmdPort")."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _daemon(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """Two nodes of two CPUs each, one partition, requeued jobs eligible again after a few seconds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for name in list(self.env):  # a surrounding job's variables would leak into ours
            if name.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and name != "SLURM_CONF":
                del self.env[name]

    # ------------------------------------------------------------------ life cycle
    def start(self, timeout: float = 60.0) -> None:
        munge = self.root / "munge"
        for folder in (munge, self.root / "state", self.root / "spool", self.root / "log"):
            folder.mkdir(parents=True, exist_ok=True)
        munge.chmod(0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = munge / "munge.socket"
        subprocess.run([_daemon("munged"), f"--socket={self.munge_socket}", f"--key-file={key}",
                        f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                        f"--seed-file={munge / 'munged.seed'}", "--force"], check=True, capture_output=True)
        self.conf.write_text(self._config())
        subprocess.run([_daemon("slurmctld"), "-f", str(self.conf), "-i"], check=True, env=self.env,
                       capture_output=True)
        for node in NODES:
            subprocess.run([_daemon("slurmd"), "-f", str(self.conf), "-N", node], check=True, env=self.env,
                           capture_output=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split()
            if states.count("idle") == len(NODES):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM nodes did not come up within {timeout:.0f} s: {states}\n{self.logs()}")

    def stop(self) -> None:
        """Stop the daemons (their jobs with them); also after a failed start."""
        for pid_file in [*(self.root / f"slurmd-{node}.pid" for node in NODES), self.root / "slurmctld.pid",
                         self.root / "munge" / "munged.pid"]:
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
            except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def _config(self) -> str:
        root = self.root
        controller_port, *node_ports = _free_ports(1 + len(NODES))
        nodes = "\n".join(f"NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
                          f"CPUs={CPUS_PER_NODE} RealMemory=4000 State=UNKNOWN"
                          for node, port in zip(NODES, node_ports))
        return f"""\
ClusterName=cifartest
SlurmctldHost=localhost
SlurmctldPort={controller_port}
SlurmUser=root
SlurmdUser=root
# cred_expire also sets how long a requeued job waits before it may start again (120 s by default)
AuthType=auth/munge
AuthInfo=socket={self.munge_socket},cred_expire=5
CredType=cred/munge
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}/%n
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log'}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=15
MinJobAge=3600
{nodes}
PartitionName=test Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""

    # ------------------------------------------------------------------ using it
    def run(self, *args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), env=kwargs.pop("env", self.env), capture_output=True, text=True,
                              check=check, timeout=60, **kwargs)  # type: ignore[call-overload]

    def sbatch(self, *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
        done = self.run("sbatch", "--parsable", *map(str, args), env={**self.env, **(env or {})}, cwd=cwd)
        return done.stdout.strip().split(";")[0]

    def job_states(self, job: str) -> dict[str, dict[str, str]]:
        """``scontrol show job`` as {job id (array: <array>_<task>): fields}; an array gives one entry per task."""
        text = self.run("scontrol", "-o", "show", "job", job).stdout
        jobs = {}
        for line in text.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            task = fields.get("ArrayTaskId")
            name = f"{fields['ArrayJobId']}_{task}" if task and task != "N/A" else fields["JobId"]
            jobs[name] = fields
        return jobs

    def wait(self, job: str, timeout: float) -> dict[str, dict[str, str]]:
        """Wait until the job (every task of an array) has finished; returns :meth:`job_states`."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.job_states(job)
            if jobs and all(fields["JobState"] in FINISHED for fields in jobs.values()):
                return jobs
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job} not finished after {timeout:.0f} s: "
                                   f"{ {name: f['JobState'] for name, f in jobs.items()} }\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                         for path in sorted((self.root / "log").glob("*.log")))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

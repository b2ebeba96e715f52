"""A real one-node Slurm cluster on this machine, for the tests: munged, slurmctld and slurmd for ``localhost``
with a minimal slurm.conf, everything (config, key, sockets, state, spool, logs) in one temporary folder.

Needs root (slurmd runs jobs as their user, and munged/slurmd are started as daemons of this machine) and
Debian's packages ``slurm-wlm`` and ``munge`` (``make test`` installs them when run as root, as it installs
Chromium). :func:`missing_requirements` says what is missing, for the skip message.

The clients (``sbatch``, ``squeue``, ``scancel`` -- and so Parsl's SlurmProvider) find the cluster through
``SLURM_CONF``; the munge socket is named in slurm.conf (``AuthInfo``), so nothing under /etc is used or changed.
Stopping cancels every job, waits for their processes to end, then stops the three daemons; any process still
carrying this cluster's ``SLURM_CONF`` in its environment (a job step orphaned by a crash) is killed by its id.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd"}
CLIENTS = {"sbatch": "slurm-client", "squeue": "slurm-client", "scancel": "slurm-client", "srun": "slurm-client"}
NODE = "localhost"
PARTITION = "debug"


def _find(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name)
                                       if p.is_file()), None)


def missing_requirements() -> list[str]:
    """What stops a test cluster from starting here (empty when it can start)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (the tests run slurmd and munged; CI runs as root)")
    for prog, package in {**DAEMONS, **CLIENTS}.items():
        if _find(prog) is None:
            missing.append(f"{prog} (Debian package {package}; `make test` installs slurm-wlm and munge as root)")
    return missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_memory_mb() -> int:
    with open("/proc/meminfo") as f:
        total_kb = int(f.readline().split()[1])
    return max(256, int(total_kb / 1024 * 0.5))


SLURM_CONF = """\
# a one-node test cluster (twinkles tests): everything under {root}
ClusterName=twinkles-test
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in a container: processes tracked by parentage, no task binding, no accounting
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
ReturnToService=2
# quick reactions: the tests kill and start blocks
KillWait=2
MessageTimeout=10
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=60
NodeName={node} NodeHostname={hostname} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """Start with :meth:`start`, stop with :meth:`stop` (idempotent); ``env`` is what a client needs."""

    def __init__(self, root: Path, cpus: int | None = None):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.node = NODE
        self.partition = PARTITION
        #: the node's host name, as Slurm reports it (this machine's)
        self.hostname = socket.gethostname()

    # ------------------------------------------------------------------ start
    def start(self, timeout_s: float = 60.0) -> SlurmCluster:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.conf.write_text(SLURM_CONF.format(root=self.root, node=NODE, hostname=self.hostname,
                                               partition=PARTITION, cpus=self.cpus,
                                               mem_mb=_node_memory_mb(), ctld_port=_free_port(),
                                               slurmd_port=_free_port()))
        m = self.root / "munge"
        self._spawn("munged", [_find("munged"), "--foreground", "--force", f"--key-file={key}",
                               f"--socket={m}/munge.socket", f"--pid-file={m}/munged.pid",
                               f"--log-file={self.root}/log/munged.log", f"--seed-file={m}/munged.seed"])
        self._wait(lambda: (m / "munge.socket").exists(), timeout_s, "munged did not create its socket")
        self._spawn("slurmctld", [_find("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self._run("scontrol", "ping").returncode == 0 and
                   "UP" in self._run("scontrol", "ping").stdout, timeout_s, "slurmctld does not answer")
        self._spawn("slurmd", [_find("slurmd"), "-D", "-N", NODE, "-f", str(self.conf)])
        self._wait(self._node_idle, timeout_s, f"node {NODE} did not become idle")
        return self

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.stdout", "w")
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()

    def _wait(self, cond, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {p.returncode} while starting the test Slurm "
                                       f"cluster; see {self.root}/log/\n{self.logs()}")
            if cond():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{what} within {timeout_s:.0f} s; see {self.root}/log/\n{self.logs()}")

    def _node_idle(self) -> bool:
        r = self._run("sinfo", "-h", "-N", "-n", NODE, "-o", "%T")
        return r.returncode == 0 and r.stdout.strip().startswith("idle")

    def logs(self, tail: int = 20) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

    # ------------------------------------------------------------------ clients
    def _run(self, prog: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run([_find(prog), *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def jobs(self) -> dict[str, str]:
        """{Slurm job id: state} of the jobs squeue knows (pending, running, completing...)."""
        r = self._run("squeue", "-h", "-o", "%i %T")
        if r.returncode != 0:
            raise RuntimeError(f"squeue failed: {r.stderr.strip()}")
        return dict(line.split() for line in r.stdout.splitlines() if line.strip())

    def cancel(self, job_id: str) -> None:
        r = self._run("scancel", str(job_id))
        if r.returncode != 0:
            raise RuntimeError(f"scancel {job_id} failed: {r.stderr.strip()}")

    # ------------------------------------------------------------------ stop
    def _own_processes(self) -> list[int]:
        """Processes (other than the daemons) with this cluster's SLURM_CONF in their environment: job steps."""
        mark = f"SLURM_CONF={self.conf}".encode()
        daemons = {p.pid for p in self.procs.values()}
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) in daemons or int(d.name) == os.getpid():
                continue
            try:
                env = (d / "environ").read_bytes()
            except OSError:
                continue
            if mark in env.split(b"\0"):
                pids.append(int(d.name))
        return pids

    def leftovers(self) -> list[str]:
        """Descriptions of this cluster's processes still alive (daemons and job processes)."""
        out = [f"{name} (pid {p.pid})" for name, p in self.procs.items() if p.poll() is None]
        for pid in self._own_processes():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out.append(f"pid {pid}: {cmd}")
            except OSError:
                pass
        return out

    def stop(self, timeout_s: float = 30.0) -> None:
        if not self.procs:
            return
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self._run("scancel", "--full", "--partition", PARTITION)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    if not self.jobs():
                        break
                except (RuntimeError, subprocess.TimeoutExpired):
                    break
                time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for pid in self._own_processes():  # job processes a crash left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while self._own_processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.procs = {}

"""A private one-node SLURM cluster on 127.0.0.1, from Debian's slurm-wlm and munge.

`install()` puts the packages on the machine when they are missing (CI runs as root on Debian);
`started(root)` writes a munge key, a slurm.conf and every daemon's socket, state, pid and log
file under `root`, starts munged, slurmctld and slurmd as children of this process, waits for
the node to be idle, and yields a `Cluster` whose `env` points SLURM's commands at it. On exit
it cancels what is left of the jobs and stops the daemons: nothing outside `root` is touched.
"""

import contextlib
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import time

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("slurmctld", "slurmd", "munged")
INSTALL_LOCK = "/tmp/nopejax_slurm_install.lock"  # pytest -n 2: one apt-get at a time
# The states of a job that has ended (a requeued one passes through COMPLETING and PENDING).
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "DEADLINE")
NODE = "localhost"  # resolves to 127.0.0.1 everywhere: jax's coordinator is this name:port


def _missing():
  return [
    d for d in DAEMONS if not shutil.which(d, path="/usr/sbin:/usr/bin:" + os.environ["PATH"])
  ]


def install():
  """None when the daemons are installed (apt-get installs them when they are missing) and
  can run, else why not."""
  if os.geteuid() != 0:
    return "the cluster's slurmd runs jobs as their users, so it needs root"
  if not _missing():
    return None
  if not shutil.which("apt-get"):
    return f"{', '.join(_missing())} missing, and there is no apt-get to install them with"
  with open(INSTALL_LOCK, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not _missing():  # the other worker installed them while this one waited
      return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", *PACKAGES]):
      proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
      if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-1500:]
        return f"`{' '.join(argv)}` failed (status {proc.returncode}): {tail}"
  return None if not _missing() else f"still missing after apt-get: {', '.join(_missing())}"


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _memory_mb():
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def slurm_conf(root, *, cpus, memory_mb, first_job_id):
  """The cluster's slurm.conf: one node, one partition, everything under `root`."""
  return f"""\
ClusterName=nopejaxtest
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Both the auth and the cred plugin reach munged through AuthInfo's socket. A requeued job
# waits cred_expire seconds (120 by default) before it may start again.
AuthInfo=socket={root}/munge.socket,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
PlugStackConfig={root}/plugstack.conf
# No cgroups: containers seldom delegate them. linuxproc tracks a job's processes by parentage.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
# CPUs are the unit: two 1-CPU tasks, or two array tasks, run at once on two cores.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# The node's CPUs and memory as written here, not as slurmd counts them.
SlurmdParameters=config_overrides
# Schedule every second, not every 30 to 60: a requeued job's BeginTime passes unannounced.
SchedulerParameters=sched_interval=1,bf_interval=1
JobRequeue=1
KillWait=30
ReturnToService=2
# jax derives its coordinator port from the job id: a random start keeps concurrent clusters
# on one machine (two test sessions) off each other's ports.
FirstJobId={first_job_id}
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
  """A running cluster: `env` reaches it; `logs()` is the daemons' recent output."""

  def __init__(self, root):
    self.root = root
    self.env = dict(os.environ, SLURM_CONF=os.path.join(root, "slurm.conf"))

  def command(self, *argv, check=True, timeout=60, **kwargs):
    """Runs a SLURM client command (sbatch, squeue, scontrol, ...) against this cluster."""
    kwargs.setdefault("env", self.env)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
      raise AssertionError(
        f"{' '.join(argv)}: status {proc.returncode}\n{proc.stdout[-2000:]}"
        f"{proc.stderr[-2000:]}{self.logs()}"
      )
    return proc

  def logs(self, chars=3000):
    """The tails of the daemons' logs, for assertion messages."""
    tails = ""
    for name in ("slurmctld.log", "slurmd.log", "munged.log"):
      path = os.path.join(self.root, name)
      if os.path.exists(path):
        tails += f"\n--- {path}:\n{open(path, errors='replace').read()[-chars:]}"
    return tails

  def jobs(self):
    """Ids of the jobs the controller has not finished with (pending, running, completing)."""
    out = self.command("squeue", "--noheader", "--format=%i", check=False).stdout
    return out.split()

  def job_state(self, job_id):
    """`scontrol show job`'s fields for `job_id`, as a dict."""
    out = self.command("scontrol", "--oneliner", "show", "job", str(job_id)).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)

  def wait(self, ready, what, timeout=120):
    deadline = time.time() + timeout
    while not ready():
      if time.time() > deadline:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}{self.logs()}")
      time.sleep(0.5)


def _write_private(path, data, mode=0o600):
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
  with os.fdopen(fd, "wb") as f:
    f.write(data)


@contextlib.contextmanager
def started(root):
  """A running cluster whose files all live under `root`; stopped on exit."""
  root = os.fspath(root)
  # munged wants its socket's directory searchable by all and, like the key's, writable only by
  # its owner.
  os.chmod(root, 0o755)
  for sub in ("state", "spool"):
    os.makedirs(os.path.join(root, sub), mode=0o700, exist_ok=True)
  _write_private(os.path.join(root, "munge.key"), os.urandom(1024))
  _write_private(os.path.join(root, "plugstack.conf"), b"")  # not the system's spank plugins
  conf = slurm_conf(
    root, cpus=max(2, os.cpu_count()), memory_mb=_memory_mb(), first_job_id=random.randint(1, 60000)
  )
  _write_private(os.path.join(root, "slurm.conf"), conf.encode(), mode=0o644)
  cluster, daemons = Cluster(root), []

  def start(name, *argv):
    # In the foreground (-D, --foreground) each daemon logs to stderr: to root/NAME.log.
    log = open(os.path.join(root, f"{name}.log"), "w")
    daemons.append(
      subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    )
    log.close()

  try:
    munge_socket = os.path.join(root, "munge.socket")
    start(
      "munged",
      "munged",
      "--foreground",
      # munged refuses a socket below a directory not everyone can search, and pytest's
      # /tmp/pytest-of-USER is 0700; only this cluster's root processes use the socket.
      "--force",
      f"--socket={munge_socket}",
      f"--key-file={root}/munge.key",
      f"--pid-file={root}/munged.pid",
      f"--seed-file={root}/munged.seed",
    )

    def alive():
      dead = [p.args[0] for p in daemons if p.poll() is not None]
      if dead:
        raise AssertionError(f"{', '.join(dead)} exited{cluster.logs()}")
      return True

    cluster.wait(lambda: alive() and os.path.exists(munge_socket), "munged's socket", timeout=30)
    conf_path = cluster.env["SLURM_CONF"]
    start("slurmctld", "slurmctld", "-D", "-i", "-f", conf_path)
    start("slurmd", "slurmd", "-D", "-f", conf_path, "-N", NODE)

    def idle():
      state = cluster.command("sinfo", "--noheader", "--format=%T", check=False).stdout
      return alive() and state.strip() == "idle"

    cluster.wait(idle, "the node to be idle", timeout=60)
    yield cluster
  finally:
    if daemons:
      _stop(cluster, daemons)


def _stop(cluster, daemons):
  """Cancels the jobs left and waits for them (slurmd's job steps outlive slurmd), then stops
  the daemons, slurmd first and munged last."""
  if len(daemons) == 3 and daemons[1].poll() is None:
    cluster.command("scancel", "--user=root", check=False)
    try:
      cluster.wait(lambda: not cluster.jobs(), "the cancelled jobs to end", timeout=60)
    except AssertionError:
      rows = cluster.command("scontrol", "listpids", check=False).stdout.splitlines()[1:]
      for pid in [row.split()[0] for row in rows if row.strip()]:  # the jobs' processes
        with contextlib.suppress(ValueError, ProcessLookupError):
          os.kill(int(pid), signal.SIGKILL)
  for proc in reversed(daemons):
    proc.terminate()
    try:
      proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()

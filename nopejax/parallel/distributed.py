"""Multi-process start-up: explicit flags anywhere, automatic on TPU VMs and under SLURM."""

import os

import jax
from absl import flags

_COORDINATOR = "coordinator_address"
_NUM = "num_processes"
_ID = "process_id"


def define_flags():
  flags.DEFINE_string(_COORDINATOR, None, "host:port of process 0 (jax.distributed.initialize).")
  flags.DEFINE_integer(_NUM, None, "Number of processes in the job.")
  flags.DEFINE_integer(_ID, None, "This process's index.")


def initialize():
  """jax.distributed.initialize when the flags or the environment ask for several processes:
  flags left unset are read from SLURM's environment (an srun step of several tasks) or found
  by jax on a multi-host TPU slice."""
  f = flags.FLAGS
  explicit = f[_COORDINATOR].value or (f[_NUM].value or 1) > 1
  slurm = "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
  tpu_slice = os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0
  if not (explicit or slurm or tpu_slice):
    return
  # CPU processes need gloo for cross-process collectives; other backends ignore it. Asking
  # jax for its backend here would start it before initialize, so the flag is set blindly.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=f[_COORDINATOR].value,
    num_processes=f[_NUM].value,
    process_id=f[_ID].value,
  )

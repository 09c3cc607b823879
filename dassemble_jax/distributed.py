"""Multi-process JAX: `jax.distributed.initialize` with cluster auto-detection.

On Cloud TPU VMs and under SLURM, JAX finds the coordinator, process count and id itself. On
anything else (a set of GPU hosts, or N processes on one machine for testing), pass them
explicitly. CPU processes talk through gloo collectives.
"""

from __future__ import annotations

import os

import jax


def _cluster_detected() -> bool:
  env = os.environ
  return bool(env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1
              or env.get("TPU_WORKER_HOSTNAMES") or env.get("CLOUD_TPU_TASK_ID")
              or env.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(*, mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> None:
  explicit = coordinator_address is not None
  if explicit and (num_processes is None or process_id is None):
    raise ValueError("--coordinator_address needs --num_processes and --process_id as well")
  if mode == "off" or (mode == "auto" and not explicit and not _cluster_detected()):
    return
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
    # CPU-only processes need a collectives backend to form one mesh.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  if jax.process_index() == 0:
    print(f"jax.distributed: {jax.process_count()} processes, {jax.device_count()} devices",
          flush=True)

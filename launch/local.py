"""Run N JAX processes on this machine, as a multi-host job would (CPU collectives via gloo).

  python launch/local.py --num_processes=2 --devices_per_process=2 -- \\
      --config=configs/mnist_odd_even.py:D0+D1,tiny --workdir=/tmp/mp

Everything after `--` goes to `python -m dassemble_jax.main`. Each process gets
--coordinator_address/--num_processes/--process_id, and its output is prefixed with [pN].
Exits non-zero if any process fails (and stops the others).
"""

import argparse
import os
import socket
import subprocess
import sys
import threading


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _pump(proc, tag):
  for line in proc.stdout:
    sys.stdout.write(f"[{tag}] {line}")
    sys.stdout.flush()


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1,
                      help="fake CPU devices per process (XLA host platform device count)")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: pick a free one)")
  parser.add_argument("main_args", nargs=argparse.REMAINDER)
  args = parser.parse_args()
  main_args = [a for a in args.main_args if a != "--"]
  port = args.port or free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices_per_process}")
  procs = []
  for i in range(args.num_processes):
    cmd = [sys.executable, "-m", "dassemble_jax.main", *main_args,
           f"--coordinator_address=127.0.0.1:{port}",
           f"--num_processes={args.num_processes}", f"--process_id={i}"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    threading.Thread(target=_pump, args=(p, f"p{i}"), daemon=True).start()
    procs.append(p)
  codes = [p.wait() for p in procs]
  if any(codes):
    for p in procs:
      if p.poll() is None:
        p.kill()
    print(f"process exit codes: {codes}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())

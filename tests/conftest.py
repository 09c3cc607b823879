"""Test setup: 8 fake CPU devices, set before JAX initialises its backend."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

from absl import flags  # noqa: E402

# Grain's multiprocess workers read absl flags; outside an absl app they must be marked parsed.
flags.FLAGS.mark_as_parsed()

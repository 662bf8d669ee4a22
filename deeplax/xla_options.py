"""XLA compiler options that make deeplax's steps fast on CPU.

jaxlib 0.10's XLA:CPU hands convolutions to YNNPACK by default
(`xla_cpu_experimental_ynn_fusion_type` = individual_dot, individual_convolution,
reduce). For DeepLab's training step that is 2x slower than XLA's own (Eigen)
convolutions: YNNPACK's backward convolutions run at a third of the FLOP rate, and its
dilated convolutions cost the whole padded input. YNNPACK's dots and reductions stay on
(without them batch-norm reductions are 10x slower).

The memory-optimised scheduler orders the step's ops so that fewer temporaries are
alive at once: XLA's buffers for the ResNet-101 train step at 321, OS 16 845 -> 669 MB,
OS 8 1958 -> 1688 MB, at the same speed (interleaved A/B in one process: 2.238 /
2.205 s, 6.648 / 6.651 s), ~2 s more compile. Measurements: benchmarks/README.md.

Pass `compiler_options()` to `jax.jit(..., compiler_options=...)` or
`lowered.compile(...)`. It is {} on other backends and on jaxlibs without the option.
"""
import functools
from typing import Dict

import jax
import jax.numpy as jnp

CPU_OPTIONS = {
    # Everything YNNPACK does by default in jaxlib 0.10.2 except convolutions.
    'xla_cpu_experimental_ynn_fusion_type':
        'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE',
    'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED',
}


@functools.lru_cache(maxsize=None)
def _cpu_options_supported() -> bool:
  """Whether this jaxlib knows the options (older ones reject unknown names)."""
  try:
    jax.jit(lambda x: x + 1).lower(jnp.zeros((1,), jnp.float32)).compile(CPU_OPTIONS)
    return True
  except Exception:  # pylint: disable=broad-except  # an unknown option is all it can be
    return False


def compiler_options(platform: str = '') -> Dict[str, str]:
  """Compiler options for a step compiled for `platform` (default: jax's default)."""
  platform = platform or jax.default_backend()
  if platform == 'cpu' and _cpu_options_supported():
    return dict(CPU_OPTIONS)
  return {}

"""Host memory: keep freed memory mapped, so that a training step does not page-fault.

XLA:CPU allocates a step's temporaries afresh on every run, and glibc's malloc serves
large blocks with mmap and gives freed ones back to the kernel: every step then touches
its ~1 GB of buffers as new pages. Measured on a ResNet-101 OS16 CPU train step: ~300,000
minor page faults and 0.6-0.8 s of kernel time per step (10-13% of its CPU time); with
`keep_freed_memory()`, none (benchmarks/README.md). On GPU/TPU the host side is small
and this changes little.

The cost: the process keeps its peak heap instead of shrinking after it, which is what a
training job (or jemalloc/tcmalloc, which PyTorch's CPU guides recommend) does anyway.
What it must not keep is compilation's heap, freed before the first step:
`release_free_memory()` after compiling hands that back once (MobileNetV2 train step:
peak resident set 2.47 -> 1.94 GB), and the steps' own buffers stay mapped after it.

"Never trim" has to mean never: a trim threshold of 2**31 - 1 (the largest positive
value mallopt takes) still trimmed every step whose freed temporaries exceed 2 GiB
(ResNet-101 OS 8 at 321: 2.5 GB, ~735,000 page faults a step, ~12% of its time);
-1 turns trimming off, as mallopt(3) documents.

Left as is: malloc's best fit can split the freed temporaries' block for a small
allocation between steps, and the next step then takes a fresh block. Seen once within
14-30 steps (MobileNetV2: the resident set grows by one step's temporaries, 0.8 GB, and
that step faults them in), then steady: two such blocks serve the steps in turn.
"""
import ctypes
import sys

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_NEVER = -1  # M_TRIM_THRESHOLD's "no automatic trimming" (stored as SIZE_MAX)


def _glibc_function(name: str, argtypes):
  """glibc's `name` with its argument types, or None off Linux/glibc."""
  if not sys.platform.startswith('linux'):
    return None
  try:
    function = getattr(ctypes.CDLL('libc.so.6'), name)
  except (OSError, AttributeError):
    return None
  function.argtypes = argtypes
  return function


def keep_freed_memory() -> bool:
  """glibc: serve every allocation from the heap (no mmap), never trim it, one arena.

  Call before the first large allocation (main.py calls it before importing jax).
  Returns whether it applied (False on other platforms or C libraries).
  """
  mallopt = _glibc_function('mallopt', [ctypes.c_int, ctypes.c_int])
  if mallopt is None:
    return False
  return all([mallopt(M_MMAP_MAX, 0) == 1,
              mallopt(M_TRIM_THRESHOLD, TRIM_NEVER) == 1,
              mallopt(M_ARENA_MAX, 1) == 1])


def release_free_memory() -> bool:
  """glibc: return every free heap page to the OS (malloc_trim), once.

  Call after compiling and before the first step: the compiler's freed memory (~0.5 GB
  for a DeepLab train step) leaves the resident set; the step's buffers are then faulted
  in once and, with `keep_freed_memory`, kept. Returns whether it ran.
  """
  malloc_trim = _glibc_function('malloc_trim', [ctypes.c_size_t])
  if malloc_trim is None:
    return False
  malloc_trim(0)
  return True

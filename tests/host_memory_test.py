"""deeplax.host_memory: freed memory stays mapped, so reallocating it costs no page faults;
release_free_memory hands it back on demand (after compiling)."""
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Plain malloc/free through ctypes, as XLA's buffers (numpy would ask for huge pages).
LIBC = textwrap.dedent('''
    import ctypes
    libc = ctypes.CDLL('libc.so.6')
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
''')
SCRIPT = LIBC + textwrap.dedent('''
    import resource, sys
    from deeplax import host_memory
    applied = host_memory.keep_freed_memory() if sys.argv[1] == 'keep' else False
    size = int(sys.argv[2])
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)  # touched
    libc.free(block)  # freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)  # the same again
    ctypes.memset(block, 1, size)
    print('FAULTS', applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
''')


def _run(script, *args):
  """stdout's words of `script` run in a fresh interpreter (its own malloc settings)."""
  proc = subprocess.run([sys.executable, '-c', script, *args], capture_output=True,
                        text=True, cwd=REPO, timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout.split()


def _faults(mode, size=200_000_000):
  _, applied, faults = _run(SCRIPT, mode, str(size))
  return applied == 'True', int(faults)


def test_reallocating_freed_memory_touches_no_new_pages():
  pages = 200_000_000 // 4096
  applied, faults = _faults('keep')
  assert applied
  assert faults < 0.02 * pages
  _, default_faults = _faults('default')  # glibc's default: mmap'd, returned, faulted again
  assert default_faults > 0.9 * pages


def test_freed_blocks_over_2_gib_stay_mapped_too():
  """A step whose temporaries exceed 2 GiB (ResNet-101 OS 8 training: 2.5 GB) must not
  have them trimmed when it frees them: a trim threshold of INT_MAX did exactly that."""
  size = 2**31 + 2**28  # 2.25 GiB
  applied, faults = _faults('keep', size)
  assert applied
  assert faults < 0.02 * size // 4096


RELEASE_SCRIPT = LIBC + textwrap.dedent('''
    from deeplax import host_memory
    assert host_memory.keep_freed_memory()
    rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096
    size = 200_000_000
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    guard = libc.malloc(1000)  # live memory above the block: it cannot merge into the top
    ctypes.memset(guard, 1, 1000)
    start = rss()
    libc.free(block)
    kept = rss()
    released = host_memory.release_free_memory()
    print('RSS', released, start - kept, start - rss())
''')


def test_release_free_memory_returns_the_kept_pages():
  """With freed memory kept mapped (as the train loop runs), a freed 200 MB block stays
  resident until release_free_memory, which returns it even from the middle of the heap."""
  _, released, dropped_on_free, dropped_on_release = _run(RELEASE_SCRIPT)
  assert released == 'True'
  assert int(dropped_on_free) < 0.02 * 200_000_000
  assert int(dropped_on_release) > 0.9 * 200_000_000

"""deeplax.host_memory: freed memory stays mapped, so reallocating it costs no page faults."""
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = textwrap.dedent('''
    import ctypes, resource, sys
    from deeplax import host_memory
    applied = host_memory.keep_freed_memory() if sys.argv[1] == 'keep' else False
    libc = ctypes.CDLL('libc.so.6')
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 200_000_000  # plain malloc, as XLA's buffers (numpy would ask for huge pages)
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)  # touched
    libc.free(block)  # freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)  # the same again
    ctypes.memset(block, 1, size)
    print('FAULTS', applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
''')


def _faults(mode):
  proc = subprocess.run([sys.executable, '-c', SCRIPT, mode], capture_output=True, text=True,
                        cwd=REPO, timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr[-2000:]
  _, applied, faults = proc.stdout.split()
  return applied == 'True', int(faults)


def test_reallocating_freed_memory_touches_no_new_pages():
  pages = 200_000_000 // 4096
  applied, faults = _faults('keep')
  assert applied
  assert faults < 0.02 * pages
  _, default_faults = _faults('default')  # glibc's default: mmap'd, returned, faulted again
  assert default_faults > 0.9 * pages

"""The persistent compilation cache: a restarted process loads its compiled step from disk."""
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = textwrap.dedent('''
    import sys
    import jax, jax.numpy as jnp
    from deeplax import compile_cache
    compile_cache.configure(sys.argv[1], min_compile_time_secs=0)

    def step(x):  # a few hundred ops, so that compiling takes a measurable time
      for i in range(50):
        x = jnp.tanh(x @ x.T + i)
      return x

    with compile_cache.CacheEvents() as events:
      jax.jit(step).lower(jnp.ones((8, 8))).compile()
    print('OUTCOME', events.outcome, events.hits, events.misses)
''')


def _outcome(cache_dir):
  proc = subprocess.run([sys.executable, '-c', SCRIPT, cache_dir], capture_output=True,
                        text=True, cwd=REPO, timeout=300,
                        env=dict(os.environ, XLA_FLAGS='', PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith('OUTCOME')][0]
  return line.split()[1:]


def test_a_restart_loads_the_compiled_step_from_the_cache(tmp_path):
  cache_dir = str(tmp_path / 'cache')
  assert _outcome(cache_dir)[0] == 'miss'
  assert os.listdir(cache_dir)  # an entry was written
  outcome, hits, misses = _outcome(cache_dir)
  assert outcome == 'hit' and int(hits) >= 1 and misses == '0'  # nothing compiled again
  assert _outcome('')[0] == 'off'

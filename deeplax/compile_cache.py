"""jax's persistent compilation cache: a restarted run loads its compiled steps instead of
compiling them again (a ResNet-101 train step takes ~30 s to compile on a 2-core CPU).

`configure(dir)` turns it on (call before the first compile); `CacheEvents` counts jax's
own cache hit and miss events, so a log line can say whether a compile came from disk.
"""
import os
import threading
from typing import Dict

import jax

_EVENTS = {'/jax/compilation_cache/cache_hits': 'hits',
           '/jax/compilation_cache/cache_misses': 'misses'}
_counts = {'hits': 0, 'misses': 0}
_lock = threading.Lock()
_listening = False


def _listener(event: str, **_) -> None:
  name = _EVENTS.get(event)
  if name:
    with _lock:
      _counts[name] += 1


def _listen() -> None:
  global _listening  # pylint: disable=global-statement
  with _lock:
    if not _listening:
      jax.monitoring.register_event_listener(_listener)
      _listening = True


def configure(cache_dir: str, min_compile_time_secs: float = 1.0) -> str:
  """Turns the cache on in `cache_dir` ('' turns it off); returns the directory used.

  Entries are kept for every compile longer than `min_compile_time_secs` (the steps; not
  the many sub-second helpers), whatever their size.
  """
  _listen()
  if not cache_dir:
    jax.config.update('jax_enable_compilation_cache', False)
    return ''
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', min_compile_time_secs)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return cache_dir


def counts() -> Dict[str, int]:
  """Cache hits and misses so far in this process."""
  _listen()
  with _lock:
    return dict(_counts)


class CacheEvents:
  """`with CacheEvents() as events: compile()`; then `events.outcome`: 'hit' (loaded from
  the persistent cache), 'miss' (compiled and, if long enough, stored) or 'off'."""

  def __enter__(self):
    self.before = counts()
    return self

  def __exit__(self, *exc):
    after = counts()
    self.hits = after['hits'] - self.before['hits']
    self.misses = after['misses'] - self.before['misses']
    return False

  @property
  def outcome(self) -> str:
    if not jax.config.jax_enable_compilation_cache or not jax.config.jax_compilation_cache_dir:
      return 'off'
    return 'hit' if self.hits and not self.misses else 'miss'

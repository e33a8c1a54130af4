"""Peak resident memory of some work in a child process, above a baseline taken just before it (Linux).

``CHILD_HELPERS`` is source code for the child process (the benchmarks run their work with ``python -c``):

* ``rss_mb(field="VmRSS")``: a /proc/self/status figure in MB (``VmHWM`` is the peak resident size);
* ``reset_peak()``: restart the peak from the current resident size (``clear_refs``, Linux >= 4.0), so that
  after it ``rss_mb("VmHWM") - rss_mb()`` is what the following work adds at most.
"""

CHILD_HELPERS = '''
def rss_mb(field="VmRSS"):
    line = next(line for line in open("/proc/self/status") if line.startswith(field))
    return int(line.split()[1]) / 1e3
def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
'''

#!/usr/bin/env python3
"""Run a command; print the CPU seconds it used (user + system, all its
threads, from wait4) on stderr as `cpu_s=N`, pass its stdout through.

    rusage.py CMD ARGS...     (exit status: the command's)

Measured from outside, the same way for every load generator, so that a
generator's own accounting is not trusted for the comparison."""
import os
import sys

pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
print(f"cpu_s={usage.ru_utime + usage.ru_stime:.3f}", file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)

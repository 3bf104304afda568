"""python peak_rss.py ARGS...: `tokenstep ARGS...` as its console script runs it (tui.cli.main), for
memory measurements: once the model is loaded, the memory loading freed is handed back to the kernel
and the peak (VmHWM) is reset, so that what the steps take shows in the resident memory from then on
(glibc keeps freed memory, and the steps would reuse loading's leftovers first, unseen). At exit, the
peak since then is the last line of standard error: `PEAK_RSS_KIB <VmHWM>`.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from pathlib import Path


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (this benchmark needs Linux)")


def loaded_then_trimmed(load):
    def load_engine(*args, **kwargs):
        engine = load(*args, **kwargs)
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        return engine

    return load_engine


if __name__ == "__main__":
    import decoding.engines.registry
    from tui.cli import main

    decoding.engines.registry.load_engine = loaded_then_trimmed(decoding.engines.registry.load_engine)
    code = main(sys.argv[1:])
    sys.stdout.flush()
    print(f"PEAK_RSS_KIB {status_kib('VmHWM')}", file=sys.stderr)
    sys.exit(code)

"""Peak resident memory of this process (what the benchmark and ``fastxent eval`` report)."""

import sys


def _status_kib(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); True on success."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    # VmHWM, not ru_maxrss: a child started from a large parent inherits the parent's peak in
    # ru_maxrss (Linux keeps the pre-exec address space's peak), and only VmHWM can be reset.
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":  # bytes there
            return kib
    return kib * 1024

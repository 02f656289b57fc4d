"""Names the refused system calls of a program in a tracefs trace (lib.sh: trace_setup).

usage: denials.py TRACE EXECUTABLE

The program's processes are those the trace saw exec EXECUTABLE. A refused call is a
sys_exit returning EPERM or EACCES in one of their threads, after the exec (systemd's
forked child, named `(unit)`, sets the sandbox up first). Each is printed
with the audited capability checks that failed in that thread since its previous refused
call: none means the kernel refused without one, as seccomp's SystemCallErrorNumber=EPERM
does. A failed CAP_DAC_READ_SEARCH check directly followed by a granted CAP_DAC_OVERRIDE
is the kernel's permission fallback, not a refusal, and is left out. Exit status 1 if
any call was refused, 2 if the trace cannot tell: the buffer overflowed, or nothing
exec'd EXECUTABLE.
"""
import re
import sys

LINE = re.compile(
    r"^\s*(?P<comm>.*)-(?P<tid>\d+)\s+\(\s*(?P<tgid>\d+|-+)\)\s+\[\d+\]\s+\S+\s+[\d.]+:\s+"
    r"(?P<event>\w+):\s+(?P<rest>.*)$"
)
BUFFER = re.compile(r"entries-in-buffer/entries-written: (\d+)/(\d+)")
EXEC = re.compile(r"filename=(\S+) pid=(\d+)")


def table(header, pattern):
    """Number -> name, from the #defines of a kernel header (linux-libc-dev)."""
    names = {}
    with open(header) as f:
        for m in re.finditer(pattern, f.read(), re.M):
            names.setdefault(int(m.group(2)), m.group(1))
    return names


SYSCALLS = table("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", r"^#define __NR_(\w+) (\d+)$")
CAPS = table("/usr/include/linux/capability.h", r"^#define (CAP_[A-Z_]+)\s+(\d+)$")
ERRNO = {-1: "EPERM", -13: "EACCES"}
DAC_OVERRIDE, DAC_READ_SEARCH = 1, 2


def main(trace, executable):
    with open(trace) as f:
        lines = f.read().splitlines()
    overflow = any(b and b.group(1) != b.group(2) for b in map(BUFFER.search, lines))
    events = [m for m in map(LINE.match, lines) if m]
    execs = (EXEC.search(m["rest"]) for m in events if m["event"] == "sched_process_exec")
    pids = {e.group(2) for e in execs if e and e.group(1) == executable}
    refused = []
    pending = {}  # tid -> the capability being checked
    failed = {}  # tid -> capabilities that failed since its last refused call
    fallback = set()  # tids whose CAP_DAC_READ_SEARCH just failed: is DAC_OVERRIDE next?

    def fail(tid, cap):
        failed.setdefault(tid, []).append(cap)

    for m in events:
        if m["tgid"] not in pids or m["comm"].startswith("("):
            continue
        tid, rest = m["tid"], m["rest"]
        if m["event"] == "cap":
            cap = int(re.search(r"cap=(-?\d+)", rest).group(1))
            if tid in fallback and cap != DAC_OVERRIDE:
                fallback.discard(tid)
                fail(tid, DAC_READ_SEARCH)
            pending[tid] = cap
        elif m["event"] == "capret" and tid in pending:
            cap, ok = pending.pop(tid), re.search(r"ret=(-?\d+)", rest).group(1) == "0"
            if tid in fallback:
                fallback.discard(tid)
                if not ok:
                    fail(tid, DAC_READ_SEARCH)
            if ok:
                continue
            if cap == DAC_READ_SEARCH:
                fallback.add(tid)
            else:
                fail(tid, cap)
        elif m["event"] == "sys_exit":
            nr, ret = map(int, re.search(r"NR (\d+) = (-?\d+)", rest).groups())
            if tid in fallback:
                fallback.discard(tid)
                fail(tid, DAC_READ_SEARCH)
            caps = sorted({CAPS.get(c, f"capability {c}") for c in failed.pop(tid, [])})
            why = "failed: " + ", ".join(caps) if caps else "no capability check failed: seccomp?"
            refused.append(f"{m['comm']}[{tid}] {SYSCALLS.get(nr, nr)}() = {ERRNO.get(ret, ret)} ({why})")
    for r in refused:
        print(r)
    if overflow:
        print("the trace buffer overflowed: calls may be missing")
        return 2
    if not pids:
        print(f"the trace saw no exec of {executable!r}: it cannot tell")
        return 2
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

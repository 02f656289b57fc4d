# Did the sandbox refuse usersync anything? The unit returns EPERM for a forbidden system
# call (SystemCallErrorNumber=EPERM) and the kernel EPERM for a missing capability, and
# neither is logged. Three detectors, each first proven on a canary that is refused:
#  1. the tracer (lib.sh): every EPERM/EACCES of the unit's processes, in every run here;
#  2. a pass with SystemCallErrorNumber= reset (a drop-in): a forbidden call then kills the
#     process (status=31/SYS, and the kernel's audit type=1326 line) instead of failing;
#  3. the journal: "Operation not permitted" in usersync's own messages.

KILL_DROPIN=/run/systemd/system/usersync.service.d/zz-vm-seccomp-kills.conf
cursor() { journalctl -q -n 0 --show-cursor | sed -n 's/^-- cursor: //p'; }
# seccomp_kills CURSOR: the journal's seccomp kills since CURSOR.
seccomp_kills() {
  journalctl --sync
  journalctl -q -o cat --after-cursor="$1" | grep -E 'status=31/SYS|type=1326' || true
}
# canary NAME COMMAND [kill]: a unit NAME.service that is usersync.service (its file and
# drop-ins) with ExecStart=COMMAND, with detector 2's drop-in if "kill".
canary() {
  local dir=/run/systemd/system/$1.service.d
  sed "s|^ExecStart=.*|ExecStart=$2|" /usr/lib/systemd/system/usersync.service >"/run/systemd/system/$1.service"
  mkdir -p "$dir"
  cp /etc/systemd/system/usersync.service.d/*.conf "$dir/"
  [ "${3:-}" != kill ] || cp "$KILL_DROPIN" "$dir/"
  systemctl daemon-reload
}
# The last start's number in $WORK/runs.
last_start() { tail -n1 "$WORK/runs" | cut -d' ' -f1; }
forbidden_call="/usr/bin/python3 -c 'import os; os.sched_setaffinity(0, {0})'"  # ~@resources
install -m 0600 -o secgw -g secgw /dev/null /server/canary
missing_capability="/usr/bin/chmod 0640 /server/canary"  # not its owner: needs CAP_FOWNER

# --- 1. The tracer ---------------------------------------------------------------------
canary vm-canary-seccomp "$forbidden_call"
start vm-canary-seccomp.service || true
found=$(denials "$(last_start)") || true
show <<<"$found"
check "proof: the tracer sees a forbidden system call answered EPERM" grep -q '^python3.* sched_setaffinity() = EPERM (no capability' <<<"$found"
canary vm-canary-capability "$missing_capability"
start vm-canary-capability.service || true
found=$(denials "$(last_start)") || true
show <<<"$found"
check "proof: the tracer sees a missing capability" grep -q '^chmod.* = EPERM (failed: CAP_FOWNER)' <<<"$found"

# --- 2. A pass where a forbidden system call kills --------------------------------------
mkdir -p "${KILL_DROPIN%/*}"
cat >"$KILL_DROPIN" <<'EOF'
# packaging/vm-test: no errno for a forbidden system call, so that it kills (SIGSYS) and
# the kernel logs it (audit type=1326).
[Service]
SystemCallErrorNumber=
EOF
systemctl daemon-reload
# systemd 252 shows "kill" as its raw value, INT_MAX - 1.
errno=$(prop usersync.service SystemCallErrorNumber)
check "the drop-in resets SystemCallErrorNumber ($errno)" test "$errno" = kill -o "$errno" = 2147483646

c=$(cursor)
canary vm-canary-seccomp "$forbidden_call" kill
start vm-canary-seccomp.service || true
found=$(seccomp_kills "$c")
show <<<"$found"
check "proof: with the drop-in, a forbidden system call kills (status=31/SYS)" grep -q 'status=31/SYS' <<<"$found"
check "proof: with the drop-in, the kernel logs it (audit type=1326)" grep -q 'type=1326' <<<"$found"

# usersync's paths again from scratch (state, first writes, chown, alert and recovery mail),
# then a delta run.
c=$(cursor)
fresh_start
failing_instance
start usersync.service || true
results=$(prop usersync.service Result)
rm -rf /server/gw5
start usersync.service || true
results+=" $(prop usersync.service Result)"
found=$(seccomp_kills "$c")
show <<<"$found"
# A kill would be Result=signal or core-dump; exit-code is the failing instance.
check "with the drop-in, usersync ends by itself (Result: $results)" test "${results//exit-code/success}" = "success success"
check "with the drop-in, the journal has no seccomp kill" test -z "$found"
rm -f "$KILL_DROPIN"

# The tracer's verdict on every run of usersync.service so far, the pass above included.
refused=$(
  while read -r n unit _; do
    [ "$unit" != usersync.service ] || denials "$n" | sed "s/^/start $n: /" || true
  done <"$WORK/runs"
)
runs=$(awk '$2 == "usersync.service"' "$WORK/runs" | wc -l)
show <<<"$refused"
check "the tracer saw nothing refused in usersync's $runs runs under the unit" test -z "$refused"

# --- 3. The journal ----------------------------------------------------------------------
found=$(journalctl -q -o cat _SYSTEMD_UNIT=usersync.service | grep 'Operation not permitted' || true)
show <<<"$found"
check "usersync logged no \"Operation not permitted\"" test -z "$found"

rm -rf /run/systemd/system/vm-canary-* /server/canary
systemctl daemon-reload

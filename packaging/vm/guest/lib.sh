# Helpers and names shared by guest/run and the scenarios (sourced; needs $PAYLOAD).
# shellcheck disable=SC2034 # the names are for the scenarios

WORK=/run/usersync-vm       # this run's files in the VM (tmpfs)
RESULTS=$WORK/results       # one line per check: ok: … / FAILED: …
FIXTURES=$PAYLOAD/guest/fixtures
TRACEFS=/sys/kernel/tracing

# The simulated tenant (fixtures/directory.json): app A serves gw1, gw2 and gw4 with a
# secret in a file; app B serves gw3 with a secret that only a systemd credential holds.
TENANT=4d6f2a1b-9c3e-4f5a-8b7d-0e1f2a3b4c5d
APP_A=a1e5c0de-0001-4a1a-8a1a-00000000000a
SECRET_A='vm-secret-A~gateways.1'
APP_B=b2e5c0de-0002-4b2b-8b2b-00000000000b
SECRET_B='vm-secret-B~credential.2'
GROUP_GW1=11111111-1111-4111-8111-111111111111
GROUP_GW2=22222222-2222-4222-8222-222222222222
GROUP_GW3=33333333-3333-4333-8333-333333333333
GROUP_GW4=44444444-4444-4444-8444-444444444444
# In no directory: Graph answers 404.
GROUP_MISSING=55555555-5555-4555-8555-555555555555
CREDENTIAL=gw3-app
CA=/etc/usersync/vm-ca.pem
PROM=/var/lib/prometheus/node-exporter/usersync.prom
MAILDIR=$WORK/mail

# Seconds since $1 (an $EPOCHREALTIME), one decimal.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

ok() { echo "ok: $*" | tee -a "$RESULTS"; }
bad() { echo "FAILED: $*" | tee -a "$RESULTS"; }
note() { echo "  $*"; }
# check WHAT COMMAND…: ok if COMMAND succeeds.
check() {
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}
# lacks PATTERN FILE: no line of FILE matches PATTERN (grep -E); shows those that do.
lacks() { ! grep -E "$1" "$2" | show; }
# Indented, for evidence under a check.
show() { sed '/^$/d; s/^/    /'; }
# wait_for SECONDS COMMAND…: tries COMMAND every 0.1 s until it succeeds, for SECONDS at most.
wait_for() {
  local end=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.1
  done
}
# listening PORT: something accepts connections on 127.0.0.1:PORT.
listening() { (: </dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
# quietly COMMAND…: its output only if it fails.
quietly() {
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  [ "$rc" = 0 ] || show <<<"$out"
  return "$rc"
}

# is OWNER_MODE FILE…: every FILE has that `owner:group mode`; says what one has otherwise.
is() {
  local want=$1 f got
  shift
  for f; do
    got=$(stat -c '%U:%G %a' "$f" 2>&1) || true
    [ "$got" = "$want" ] || { note "$f is $got, not $want"; return 1; }
  done
}
# lists_match STAGE INSTANCE: every list of fixtures/expected/STAGE/INSTANCE equals the
# instance's file byte for byte; shows the difference otherwise.
lists_match() {
  local f rc=0
  for f in "$FIXTURES/expected/$1/$2"/*; do
    cmp -s "$f" "/server/$2/config/${f##*/}" && continue
    diff -u "$f" "/server/$2/config/${f##*/}" 2>&1 | show || true
    rc=1
  done
  return "$rc"
}

# --- The gateway -----------------------------------------------------------------------
# stale_list: gw2's list as the gateway had it before usersync: secgw:secgw 0640, outdated.
stale_list() {
  install -m 0640 -o secgw -g secgw /dev/null /server/gw2/config/allowed_senders_ldap.txt
  printf '%s\n' stale.partner@fabrikam.example >/server/gw2/config/allowed_senders_ldap.txt
}
# fresh_start: the instances as 30-sync first met them: no run state, no lists but gw2's
# stale one.
fresh_start() {
  rm -rf /var/lib/usersync/* /server/gw*/config/*.txt
  stale_list
}
# failing_instance: gw5, whose group Graph does not know (404). Remove /server/gw5 after.
failing_instance() {
  install -d -m 0755 /server/gw5/config/entraid
  install -m 0600 /dev/null /server/gw5/config/entraid/gone.entraidconf
  printf '%s\n' "tenant_id = \"$TENANT\"" "client_id = \"$APP_A\"" "client_secret = \"$SECRET_A\"" \
    "group_id = \"$GROUP_MISSING\"" >/server/gw5/config/entraid/gone.entraidconf
}
# files: owner, group and mode of everything usersync writes, one per line.
# (A delta state's member data is named by a random generation: shown as <gen>.)
files() {
  find /server -name '*.txt' -printf '%p %u:%g %m\n' | sort
  find /var/lib/usersync "${PROM%/*}" -printf '%p %u:%g %m\n' | sed -E 's/\.[0-9a-f]{16}\./.<gen>./' | sort
}

# --- Units ---------------------------------------------------------------------------
# start UNIT: `systemctl start UNIT`, with the denial tracer (below) recording; its
# status is systemctl's. Each start is a line of $WORK/runs: N UNIT EXECUTABLE STATUS.
start() {
  local unit=$1 rc=0 n exe
  journalctl -q -n 0 --show-cursor | sed -n 's/^-- cursor: //p' >"$WORK/cursor.$unit"
  trace_on
  systemctl start "$unit" || rc=$?
  n=$(($(wc -l <"$WORK/runs") + 1))
  trace_off "$WORK/trace/$n"
  exe=$(prop "$unit" ExecStart | sed -n 's/^{ path=\([^ ;]*\).*/\1/p')
  echo "$n $unit $exe $rc" >>"$WORK/runs"
  return "$rc"
}
# What UNIT's processes logged since its last start(), message text only (not by its
# InvocationID: systemd forgets that of a oneshot that succeeded). Not with a match
# either: journalctl 252 given --after-cursor and a match skips the first entry matching.
# journald may still be reading the unit's stdout after it ended: until two reads 0.3 s
# apart agree.
last_log() {
  local now before=
  for _ in $(seq 20); do
    now=$(journalctl -q -o json --after-cursor="$(cat "$WORK/cursor.$1")" | python3 -c '
import json, sys
for e in map(json.loads, sys.stdin):
    if e.get("_SYSTEMD_UNIT") == sys.argv[1]:
        print(e["MESSAGE"] if isinstance(e["MESSAGE"], str) else bytes(e["MESSAGE"]).decode(errors="replace"))
' "$1")
    [ -n "$now" ] && [ "$now" = "$before" ] && break
    before=$now
    sleep 0.3
  done
  printf '%s\n' "$now"
}
prop() { systemctl show -p "$2" --value "$1"; }
# unit_lines UNIT: every journal entry since UNIT's last start() that is about it: its
# processes', systemd's about it (UNIT=), and about its credentials' mount; as
# "priority unit: message". (A line of systemd's is in the journal even when LogLevelMax
# hides it from the unit: then it is not there at all.)
unit_lines() {
  journalctl -q -o json --after-cursor="$(cat "$WORK/cursor.$1")" | python3 -c '
import json, sys
unit = sys.argv[1]
for e in map(json.loads, sys.stdin):
    about = {e.get("_SYSTEMD_UNIT"), e.get("UNIT"), e.get("USER_UNIT")}
    if unit in about or "run-credentials-" + unit + ".mount" in about:
        m = e["MESSAGE"] if isinstance(e["MESSAGE"], str) else bytes(e["MESSAGE"]).decode(errors="replace")
        print(e.get("PRIORITY", "?"), (e.get("UNIT") or e.get("_SYSTEMD_UNIT")) + ":", m)
' "$1"
}

# --- The simulator --------------------------------------------------------------------
# sim_move USER_ID GROUP|-: moves a user of the simulated tenant into GROUP (- for none, a
# tenant user in no group), as an admin would in Entra ID. The simulator reads its
# directory file again within 0.1 s.
sim_move() {
  python3 - "$WORK/directory.json" "$1" "$2" <<'PY'
import json, os, sys
path, uid, to = sys.argv[1:]
d = json.load(open(path))
pools = [d["users"], *d["groups"].values()]
user = next(u for pool in pools for u in pool if u["id"] == uid)
for pool in pools:
    pool[:] = [u for u in pool if u["id"] != uid]
(d["users"] if to == "-" else d["groups"][to]).append(user)
json.dump(d, open(path + ".new", "w"), indent=1)
os.rename(path + ".new", path)
PY
  sleep 0.5
}

# --- Alert mail (tests/smtp/server.py writes N.eml) -----------------------------------
mail_count() { find "$MAILDIR" -name '*.eml' | wc -l; }
# more_mail N: more than N mails arrived.
more_mail() { [ "$(mail_count)" -gt "$1" ]; }
# mail_part N subject|body: a header or the decoded text body of mail N.
mail_part() {
  python3 - "$MAILDIR/$1.eml" "$2" <<'PY'
import email, email.policy, sys
m = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=email.policy.default)
print(m["subject"] if sys.argv[2] == "subject" else m.get_body(("plain",)).get_content())
PY
}

# --- The denial tracer ------------------------------------------------------------------
# The sandbox turns a forbidden system call into EPERM (SystemCallErrorNumber=EPERM), and
# a missing capability into EPERM or EACCES: neither is logged anywhere. So while a unit
# starts, the kernel records (tracefs) every system call that returns EPERM or EACCES and
# every capability check with its outcome, and every exec; denials.py then names, for the
# processes that ran the unit's executable, each refused call and the capability that
# failed in it, if any. (Not by ExecMainPID: systemd resets it when a oneshot succeeds.)
trace_setup() {
  mountpoint -q "$TRACEFS" || mount -t tracefs tracefs "$TRACEFS"
  echo 0 >"$TRACEFS/tracing_on"
  # cap_capable(cred, ns, cap, opts): cap in %dx, opts in %cx (x86-64 calling convention).
  echo 'p:usersync_vm/cap cap_capable cap=%dx:s32 opts=%cx:u32' >"$TRACEFS/kprobe_events"
  # shellcheck disable=SC2016 # $retval is the kprobe's
  echo 'r:usersync_vm/capret cap_capable ret=$retval:s32' >>"$TRACEFS/kprobe_events"
  # Not the checks made with CAP_OPT_NOAUDIT (2): probes whose failure is expected, which
  # SELinux and AppArmor do not report either. The others carry 0 or CAP_OPT_INSETID (4).
  echo 'opts == 0 || opts == 4' >"$TRACEFS/events/usersync_vm/cap/filter"
  echo 1 >"$TRACEFS/events/usersync_vm/enable"
  echo 'ret == -1 || ret == -13' >"$TRACEFS/events/raw_syscalls/sys_exit/filter"
  echo 1 >"$TRACEFS/events/raw_syscalls/sys_exit/enable"
  echo 1 >"$TRACEFS/events/sched/sched_process_exec/enable"
  echo 1 >"$TRACEFS/options/record-tgid"
  echo 16384 >"$TRACEFS/buffer_size_kb"
  mkdir -p "$WORK/trace"
  : >"$WORK/runs"
}
trace_on() {
  echo >"$TRACEFS/trace"
  echo 1 >"$TRACEFS/tracing_on"
}
# trace_off FILE: stops recording and keeps what was recorded in FILE.
trace_off() {
  echo 0 >"$TRACEFS/tracing_on"
  cat "$TRACEFS/trace" >"$1"
}
# denials N: what denials.py finds in start N's trace for the processes of its executable.
denials() {
  python3 "$PAYLOAD/guest/denials.py" "$WORK/trace/$1" "$(awk -v n="$1" '$1 == n { print $3 }' "$WORK/runs")"
}

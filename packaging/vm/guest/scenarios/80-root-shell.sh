# usersync from a root shell, from the same starting point as 30-sync's first run under the
# unit: what differs (exit status, output, owners and modes, refused calls). Twice: as is,
# and with $CREDENTIALS_DIRECTORY pointed by hand at where the unit loads gw3's secret
# from. Notes for whoever reads the output, no checks: a root shell is not how it runs.

# Output lines without their timestamps, sorted (the journal interleaves stdout and
# stderr), and without the alert mail: fresh_start clears the alert state it depends on.
lines() { sed -E 's/^[0-9-]+T[0-9:.]+Z +//; s/^ +//' "$@" | grep -v 'alert delivered' | sort; }
# differences UNIT-FILE ROOT-FILE: lines only under the unit (-), only from the shell (+).
differences() {
  local d
  d=$(diff "$1" "$2" | sed -n 's/^</-/p; s/^>/+/p') || true
  show <<<"${d:-none}"
}

# root_run ENV…: a run of /usr/bin/usersync from this shell under `env ENV…`, compared.
root_run() {
  local rc=0 n d
  fresh_start
  trace_on
  env "$@" /usr/bin/usersync >"$WORK/root.out" 2>"$WORK/root.err" || rc=$?
  n=$(($(wc -l <"$WORK/runs") + 1))
  trace_off "$WORK/trace/$n"
  echo "$n root-shell /usr/bin/usersync $rc" >>"$WORK/runs"
  note "exit status: $rc (under the unit: $(cat "$WORK/sync-1.status"))"
  note "output, under the unit (-) and from the shell (+):"
  differences <(lines "$WORK/sync-1.log") <(lines "$WORK/root.out" "$WORK/root.err")
  note "owners and modes, under the unit (-) and from the shell (+):"
  differences "$WORK/files-unit" <(files)
  note "refused system calls:"
  d=$(denials "$n") || true
  show <<<"${d:-none}"
}

sim_move u11 - # dana.new leaves gw1's group again: the directory 30-sync met
note "== a root shell"
root_run
note "== a root shell with CREDENTIALS_DIRECTORY=/etc/usersync/credentials"
root_run CREDENTIALS_DIRECTORY=/etc/usersync/credentials

# The state 30-sync left makes the next runs delta reads, and a membership change made in
# the simulated Entra ID reaches the list through one. A run with nothing changed is quiet:
# one line in the journal, counting systemd's.

rc=0
start usersync.service || rc=$?
last_log usersync.service >"$WORK/sync-2.log"
show <"$WORK/sync-2.log"
check "a second start succeeds (status $rc)" test "$rc" = 0
# Nothing changed: 2 tokens (apps A and B), a users round per app and a membership round per
# group (4) make 8 requests; a full read of any group would make more.
check "the second run says one line: nothing changed, by delta (8 requests)" \
  test "$(cat "$WORK/sync-2.log")" = "unchanged: 4 instances, 5 lists, 8 HTTP requests"
check "the second run's journal has that one line, and no line of systemd's about it" \
  test "$(unit_lines usersync.service | tee "$WORK/sync-2.journal" | wc -l)" -le 1
show <"$WORK/sync-2.journal"

sim_move u11 "$GROUP_GW1"   # dana.new joins gw1's group
rc=0
start usersync.service || rc=$?
last_log usersync.service >"$WORK/sync-3.log"
show <"$WORK/sync-3.log"
check "after a join, gw1's group is read by delta" grep -q '^gw1: config .*: delta read' "$WORK/sync-3.log"
check "the join reached gw1's allowed senders (+1)" \
  grep -q '^gw1: allowed_senders .*: written (3 -> 4 entries, +1 -0' "$WORK/sync-3.log"
check "gw1's lists are the changed directory's, byte for byte" lists_match dana-joins gw1
check "the join is kept as a log of changes beside untouched member data (one log)" \
  test "$(find /var/lib/usersync/delta -name '*.log' | wc -l)" = 1

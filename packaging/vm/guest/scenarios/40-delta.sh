# The state 30-sync left makes the next runs delta reads (report lines "delta read"), and
# a membership change made in the simulated Entra ID reaches the list through one.

rc=0
start usersync.service || rc=$?
last_log usersync.service >"$WORK/sync-2.log"
show <"$WORK/sync-2.log"
check "a second start succeeds (status $rc)" test "$rc" = 0
check "the second run reads each of the 4 groups by delta" test "$(grep -c ': delta read' "$WORK/sync-2.log")" = 4
check "the second run reads none in full" lacks ': full read' "$WORK/sync-2.log"
check "the second run leaves gw1's lists unchanged" \
  test "$(grep -c '^gw1: .*: unchanged' "$WORK/sync-2.log")" = 2

sim_move u11 "$GROUP_GW1"   # dana.new joins gw1's group
rc=0
start usersync.service || rc=$?
last_log usersync.service >"$WORK/sync-3.log"
show <"$WORK/sync-3.log"
check "after a join, gw1's group is read by delta" grep -q '^gw1: config .*: delta read' "$WORK/sync-3.log"
check "the join reached gw1's allowed senders (+1)" \
  grep -q '^gw1: allowed_senders .*: written (3 -> 4 entries, +1 -0' "$WORK/sync-3.log"
check "gw1's lists are the changed directory's, byte for byte" lists_match dana-joins gw1

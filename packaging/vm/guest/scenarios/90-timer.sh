# The shipped timer, enabled as the README says.

check "systemctl enable --now usersync.timer" quietly systemctl enable --now usersync.timer
state=$(prop usersync.timer ActiveState)
next=$(prop usersync.timer NextElapseUSecMonotonic)
check "usersync.timer is enabled ($(systemctl is-enabled usersync.timer))" \
  test "$(systemctl is-enabled usersync.timer)" = enabled
check "usersync.timer is active ($state) with a next elapse ($next)" \
  test "$state" = active -a -n "$next"

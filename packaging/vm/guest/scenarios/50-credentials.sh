# `usersync check` on the configuration with a systemd credential (gw3): from a root shell,
# where $CREDENTIALS_DIRECTORY is not set, and from systemd-run with the credential loaded.

out=$(usersync check 2>&1) && rc=0 || rc=$?
show <<<"$out"
check "usersync check from a root shell does not fail (exit $rc)" test "$rc" = 0
out=$(systemd-run -q --pipe --wait -p "LoadCredential=$CREDENTIAL:/etc/usersync/credentials/$CREDENTIAL" \
  usersync check 2>&1) && rc=0 || rc=$?
show <<<"$out"
check "systemd-run -p LoadCredential=… usersync check passes (exit $rc)" test "$rc" = 0

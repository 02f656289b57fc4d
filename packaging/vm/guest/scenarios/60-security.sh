# systemd's own rating of the installed unit, with the site's drop-in (credentials.conf).

out=$(systemd-analyze security usersync.service 2>&1) || true
score=$(sed -n 's/.*Overall exposure level for usersync.service: \([0-9.]*\).*/\1/p' <<<"$out")
{ grep -E '^✗' <<<"$out" || true; } | show
check "systemd-analyze security: overall exposure ${score:-?} is at most 2.1" \
  awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.1) }'

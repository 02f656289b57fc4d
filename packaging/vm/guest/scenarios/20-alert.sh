# A failing instance (a group Graph does not know: 404) fails the unit with exit 1 and
# sends the alert mail. First of all, while no earlier failure holds alerts back
# (repeat_hours).

failing_instance

mails=$(mail_count)
rc=0
start usersync.service || rc=$?
check "systemctl start usersync.service fails (status $rc)" test "$rc" != 0
check "ExecMainStatus=1 ($(prop usersync.service ExecMainStatus))" test "$(prop usersync.service ExecMainStatus)" = 1
last_log usersync.service | show
# Each line of the error (error:, hint:) at priority err: journalctl -p err finds it,
# though the unit logs at notice.
errs=$(unit_lines usersync.service | awk '$1 == 3')
check "its error and hint are in the journal at priority err" \
  bash -c 'grep -q "error: instance .gw5." <<<"$1" && grep -q "hint: " <<<"$1"' _ "$errs"
check "an alert mail arrived" wait_for 5 more_mail "$mails"
n=$(mail_count)
subject=$(mail_part "$n" subject)
body=$(mail_part "$n" body)
note "subject: $subject"
check "its subject names the instance" grep -q 'gw5 failed (exit 1)' <<<"$subject"
check "its body names the instance" grep -q '^instance gw5: failed' <<<"$body"
check "its body has Graph's 404" grep -q 'HTTP 404 Request_ResourceNotFound' <<<"$body"
rm -rf /server/gw5

# Four instances as a gateway has them, synced by the unit:
#   gw1  root's, two outputs, the secret in /etc/usersync/secrets
#   gw2  the gateway account's (secgw, 0750), its config too, a stale list 0640 secgw:secgw
#   gw3  root's, the secret only in a systemd credential (LoadCredential= in a drop-in)
#   gw4  secgw's, no list yet
# Lists, owners and modes, the metrics textfile, the delta state, the recovery mail.

# conf FILE GROUP [LINE…]: an .entraidconf of app A (its secret given by LINE…).
conf() {
  local file=$1 group=$2
  shift 2
  printf '%s\n' "tenant_id = \"$TENANT\"" "client_id = \"$APP_A\"" "group_id = \"$group\"" "$@" >"$file"
}

install -d -m 0755 /server/gw1/config/entraid /server/gw3/config/entraid
install -d -m 0700 /etc/usersync/secrets /etc/usersync/credentials
install -m 0600 /dev/null /etc/usersync/secrets/gw1
printf '%s\n' "$SECRET_A" >/etc/usersync/secrets/gw1
install -m 0600 /dev/null /server/gw1/config/entraid/staff.entraidconf
conf /server/gw1/config/entraid/staff.entraidconf "$GROUP_GW1" \
  'client_secret_file = "/etc/usersync/secrets/gw1"' 'query_filter = "mail,mobilePhone"' \
  'feeds = ["allowed_senders", "gsm_list"]'

for gw in gw2 gw4; do
  install -d -m 0750 -o secgw -g secgw "/server/$gw" "/server/$gw/config" "/server/$gw/config/entraid"
  install -m 0600 -o secgw -g secgw /dev/null "/server/$gw/config/entraid/app.secret"
  printf '%s\n' "$SECRET_A" >"/server/$gw/config/entraid/app.secret"
  install -m 0600 -o secgw -g secgw /dev/null "/server/$gw/config/entraid/$gw.entraidconf"
done
conf /server/gw2/config/entraid/gw2.entraidconf "$GROUP_GW2" 'client_secret_file = "app.secret"'
conf /server/gw4/config/entraid/gw4.entraidconf "$GROUP_GW4" 'client_secret_file = "app.secret"'
stale_list

install -m 0600 /dev/null "/etc/usersync/credentials/$CREDENTIAL"
printf '%s\n' "$SECRET_B" >"/etc/usersync/credentials/$CREDENTIAL"
install -m 0600 /dev/null /server/gw3/config/entraid/finance.entraidconf
printf '%s\n' "tenant_id = \"$TENANT\"" "client_id = \"$APP_B\"" "group_id = \"$GROUP_GW3\"" \
  "client_secret_credential = \"$CREDENTIAL\"" >/server/gw3/config/entraid/finance.entraidconf
mkdir -p /etc/systemd/system/usersync.service.d
cat >/etc/systemd/system/usersync.service.d/credentials.conf <<EOF
[Service]
LoadCredential=$CREDENTIAL:/etc/usersync/credentials/$CREDENTIAL
EOF
systemctl daemon-reload

mails=$(mail_count)
rc=0
start usersync.service || rc=$?
echo "$rc" >"$WORK/sync-1.status"
check "systemctl start usersync.service succeeds (status $rc, ExecMainStatus=$(prop usersync.service ExecMainStatus))" test "$rc" = 0
last_log usersync.service >"$WORK/sync-1.log"
show <"$WORK/sync-1.log"
files >"$WORK/files-unit"
for gw in gw1 gw2 gw3 gw4; do
  check "$gw's lists are the simulator's directory, byte for byte" lists_match initial "$gw"
done
check "gw1's lists are root:root 0640" \
  is "root:root 640" /server/gw1/config/allowed_senders_ldap.txt /server/gw1/config/gsm_list.txt
check "gw2's list kept secgw:secgw 0640" is "secgw:secgw 640" /server/gw2/config/allowed_senders_ldap.txt
check "gw3's list (credential) is root:root 0640" is "root:root 640" /server/gw3/config/allowed_senders_ldap.txt
check "gw4's new list is secgw:secgw 0640, as its directory" is "secgw:secgw 640" /server/gw4/config/allowed_senders_ldap.txt
check "the first run reads every group in full" test "$(grep -c ': full read (first)' "$WORK/sync-1.log")" = 4

check "the metrics textfile is written, root:root 0644 ($PROM)" is "root:root 644" "$PROM"
# up INSTANCE…: the metrics textfile says each is up.
up() {
  local gw
  for gw; do grep -qx "usersync_instance_up{instance=\"$gw\"} 1" "$PROM" || return 1; done
}
check "the metrics say every instance is up" up gw1 gw2 gw3 gw4

check "the state directory is root:root 0750 (StateDirectoryMode)" is "root:root 750" /var/lib/usersync
check "the run state is 0600" is "root:root 600" /var/lib/usersync/state.json
states=(/var/lib/usersync/delta/*.links)
check "a delta state for each of the 4 groups (${#states[@]})" test "${#states[@]}" = 4
check "each with one generation of member data (members, index) and no log yet" \
  test "$(find /var/lib/usersync/delta -name '*.members' | wc -l)$(find /var/lib/usersync/delta -name '*.index' | wc -l)$(find /var/lib/usersync/delta -name '*.log' | wc -l)" = 440
check "every delta state file is root:root 0600" is "root:root 600" /var/lib/usersync/delta/*
memos=(/var/lib/usersync/instances/*.json)
check "what each instance's lists were written from, root:root 0600 (${#memos[@]})" \
  is "root:root 600" "${memos[@]}"

# 20-alert left the alert state failing: this success is the recovery.
subject=
if wait_for 5 more_mail "$mails"; then subject=$(mail_part "$(mail_count)" subject); fi
check "the recovery mail arrived ($subject)" grep -q 'recovered' <<<"$subject"

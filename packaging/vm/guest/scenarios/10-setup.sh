# The package, and the world usersync meets on a gateway: Microsoft at its real names
# (the simulator, with a private CA), a mail relay for alerts, node-exporter's textfile
# directory, the gateway's account. Starts the denial tracer.

check "dpkg -i usersync.deb" quietly dpkg -i "$PAYLOAD/usersync.deb"
check "usersync.service is installed ($(systemctl is-enabled usersync.service))" \
  test "$(systemctl is-enabled usersync.service)" = static
check "usersync.timer is installed, not enabled ($(systemctl is-enabled usersync.timer))" \
  test "$(systemctl is-enabled usersync.timer)" = disabled

# Microsoft's names lead to the simulator. The .entraidconf files name no endpoint: the
# default cloud (global) is what is tested.
cat >>/etc/hosts <<'EOF'
127.0.0.1	login.microsoftonline.com graph.microsoft.com
EOF
cp "$FIXTURES/directory.json" "$WORK/directory.json"
systemd-run -q --unit=usersync-sim "$PAYLOAD/bin/usersync-sim" "$WORK/directory.json" \
  --tls --port 443 --ca-file "$CA" --public-url https://graph.microsoft.com
check "the simulator listens on 127.0.0.1:443" wait_for 10 listening 443
check "the simulator wrote its CA ($CA)" test -s "$CA"

# The alert relay: tests/smtp/server.py picks its own port and writes it to --port-file.
mkdir -p "$MAILDIR"
systemd-run -q --unit=smtp-sink python3 "$PAYLOAD/smtp/server.py" --port-file "$WORK/smtp.port" --out "$MAILDIR"
check "the SMTP sink listens" wait_for 10 test -s "$WORK/smtp.port"

# As node-exporter's package would (the unit may write there: ReadWritePaths=-…).
install -d -m 0755 "${PROM%/*}"
cat >/etc/usersync/usersync.toml <<EOF
# packaging/vm-test: the shipped defaults, plus what this VM needs.
[metrics]
textfile = "$PROM"

[http]
ca_bundle = "$CA"

[alert]
from = "usersync@usersync-vm.example"
to = ["gateway-admins@example.com"]

[[alert.provider]]
kind = "smtp"
priority = 1
host = "127.0.0.1"
port = $(cat "$WORK/smtp.port")
security = "none"
EOF

# The gateway's own account, which owns its instances.
useradd --system --user-group --no-create-home --shell /usr/sbin/nologin secgw
install -d -m 0755 /server

trace_setup
check "the denial tracer is armed (kprobes on cap_capable, sys_exit)" \
  test "$(cat "$TRACEFS/events/usersync_vm/enable")" = 1

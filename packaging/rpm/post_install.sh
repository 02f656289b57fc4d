# usersync keeps its run state here (systemd's StateDirectory= makes it too; cron runs need it).
install -d -m 0750 /var/lib/usersync

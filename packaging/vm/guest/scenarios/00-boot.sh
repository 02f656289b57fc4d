# The VM itself: systemd is PID 1, nothing but loopback, and how long boot took.
check "systemd is PID 1 ($(readlink /proc/1/exe))" test "$(readlink /proc/1/exe)" = /usr/lib/systemd/systemd
links=$(ip -o link show | awk -F': ' '{ print $2 }' | paste -sd' ')
check "no network device but loopback ($links)" test "$links" = lo
note "$(systemd-analyze time 2>&1 | head -n1)"
note "kernel $(uname -r), $(systemd --version | head -n1)"

# Freshness under the shipped timer (enabled by 90-timer, as installed: no drop-in for the
# cadence): 20 changes in the simulated Entra ID, one every 5 s (joins, leaves, disables,
# mail changes, in turn: over more than one cycle of the timer), each timed from the moment the simulator has it (its directory
# file renamed into place; it reads it again within 0.1 s) to the modification time of the
# first gw1 list that carries it. The goal: within 2 minutes, median, 95th percentile and
# maximum alike.

list=/server/gw1/config/allowed_senders_ldap.txt
# 60 more members of gw1's group (p1 … p60), 15 of whom leave, are disabled or are renamed
# (so that a run seeing most of the changes at once stays within the guard's limits); 5
# tenant users (f1 … f5) to join it.
python3 - "$WORK/directory.json" "$GROUP_GW1" <<'PY'
import json, os, sys
path, group = sys.argv[1:]
d = json.load(open(path))
user = lambda i: {"@odata.type": "#microsoft.graph.user", "id": i, "displayName": i, "accountEnabled": True, "mail": i + "@fresh.example"}
d["groups"][group] += [user(f"p{n}") for n in range(1, 61)]
d["users"] += [user(f"f{n}") for n in range(1, 6)]
json.dump(d, open(path + ".new", "w"), indent=1)
os.rename(path + ".new", path)
PY
check "the timer's runs bring gw1 the 60 new members (within 3 min)" \
  wait_for 180 grep -qx p60@fresh.example "$list"

python3 - "$WORK/directory.json" "$GROUP_GW1" "$list" >"$WORK/freshness" <<'PY'
import json, os, statistics, sys, time
path, group, listing = sys.argv[1:]

def edit(change):
    d = json.load(open(path))
    change(d)
    json.dump(d, open(path + ".new", "w"), indent=1)
    os.rename(path + ".new", path)
    return time.time()

def member(d, i):
    return next(u for u in d["groups"][group] if u["id"] == i)

def join(i):
    def f(d):
        u = next(u for u in d["users"] if u["id"] == i)
        d["users"].remove(u)
        d["groups"][group].append(u)
    return f, [f"{i}@fresh.example"], []

def leave(i):
    def f(d):
        u = member(d, i)
        d["groups"][group].remove(u)
        d["users"].append(u)
    return f, [], [f"{i}@fresh.example"]

def disable(i):
    return (lambda d: member(d, i).update(accountEnabled=False)), [], [f"{i}@fresh.example"]

def rename(i):
    return (lambda d: member(d, i).update(mail=f"{i}.renamed@fresh.example")), [f"{i}.renamed@fresh.example"], [f"{i}@fresh.example"]

kinds = [("join", join), ("leave", leave), ("disable", disable), ("mail", rename)]
changes, p = [], 1
for k in range(20):
    name, make = kinds[k % 4]
    if name == "join":
        who = f"f{k // 4 + 1}"
    else:
        who, p = f"p{p}", p + 1
    changes.append((name, who, *make(who)))

pending, done = [], []
start = time.time()
def poll():
    try:
        st = os.stat(listing)
        lines = set(open(listing).read().split())
    except OSError:
        return
    for c in list(pending):
        name, who, t, present, absent = c
        if st.st_mtime >= t and all(m in lines for m in present) and not any(m in lines for m in absent):
            pending.remove(c)
            done.append((name, who, st.st_mtime - t))
for k, (name, who, f, present, absent) in enumerate(changes):
    while time.time() < start + 5 * k:
        poll()
        time.sleep(0.1)
    pending.append((name, who, edit(f), present, absent))
deadline = time.time() + 240
while pending and time.time() < deadline:
    poll()
    time.sleep(0.1)
for name, who, s in done:
    print(f"change {name} {who} {s:.1f}")
for name, who, t, _, _ in pending:
    print(f"missing {name} {who}")
if done:
    x = sorted(s for _, _, s in done)
    p95 = x[min(len(x) - 1, round(0.95 * (len(x) - 1)))]
    print(f"figures {len(x)} {statistics.median(x):.1f} {p95:.1f} {x[-1]:.1f}")
PY
show <"$WORK/freshness"
read -r _ n median p95 max < <(grep '^figures' "$WORK/freshness" || echo "figures 0 - - -")
note "freshness over $n changes: median $median s, p95 $p95 s, max $max s"
check "all 20 changes reached gw1's list" test "$n" = 20
check "each within 2 minutes: median $median s, p95 $p95 s, max $max s" \
  awk -v m="$max" 'BEGIN { exit !(m + 0 > 0 && m + 0 <= 120) }'
if [ "$n" != 20 ]; then
  note "what the timer and the service did:"
  systemctl list-timers --all usersync.timer 2>&1 | show
  for p in ActiveState Result ExecMainStatus InactiveEnterTimestamp; do note "usersync.service $p=$(prop usersync.service "$p")"; done
  for p in LastTriggerUSec NextElapseUSecMonotonic Result; do note "usersync.timer $p=$(prop usersync.timer "$p")"; done
  journalctl -q -o short-monotonic --since "-8min" -u usersync.service -u usersync.timer | tail -60 | show
fi
systemctl disable --now usersync.timer >/dev/null 2>&1 || true

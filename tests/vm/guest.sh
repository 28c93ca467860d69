#!/bin/bash
# The checks of `make test-systemd`, run as root inside the Debian 12 guest (systemd is
# PID 1) by t3vm.service, once per boot. $1 is the 9p share: the .deb, this script, the
# file `phase` the host wrote, and results.txt, where each check adds one PASS or FAIL line.
#   main            install the .deb on the fresh guest and run every unit/daemon check
#   cut POINT N     check the state a power cut left (if any), then start a pass and say
#                   T3VM-CUT-NOW on the console at POINT: the host SIGKILLs qemu there
#   final           check the last cut's state, then remove and purge the package
set -u
IO=$1
RESULTS=$IO/results.txt
read -r PHASE POINT CUT < "$IO/phase" || true
DEST=/var/backups/t3-state
USERS=(alice bob carol)
METRICS=http://127.0.0.1:9745/metrics
PY=/usr/bin/python3.11

say() { echo "$*"; echo "$*" >> "$RESULTS"; sync "$RESULTS" 2>/dev/null || true; }
pass() { say "PASS $*"; }
fail() { say "FAIL $*"; }
note() { say "NOTE $*"; }
# Usage: `COMMANDS; st=$?; verdict NAME DETAIL`: the status is taken before DETAIL's
# command substitutions run (they would overwrite $?).
verdict() { # verdict NAME DETAIL: PASS if st (the checked commands' status) is 0
    local status=$st
    if [ "$status" -eq 0 ]; then pass "$1${2:+: $2}"; else fail "$1${2:+: $2}"; fi
}
now() { date +%s.%N; }
since() { $PY -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

# metric NAME [LABELS-SUBSTRING]: the value of the first matching sample, or "none".
metric() {
    $PY - "$@" <<'PY'
import re, sys, urllib.request
name, want = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
try:
    text = urllib.request.urlopen("http://127.0.0.1:9745/metrics", timeout=10).read().decode()
except OSError:
    print("none"); sys.exit()
for line in text.splitlines():
    m = re.match(r"^(\w+)(\{[^}]*\})? (\S+)$", line)
    if m and m.group(1) == name and want in (m.group(2) or ""):
        print(m.group(3)); break
else:
    print("none")
PY
}
# wait_until SECONDS COMMAND...: true once COMMAND succeeds, false after SECONDS.
wait_until() {
    local limit=$1; shift
    local end=$(( $(date +%s) + limit ))
    until "$@"; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.2
    done
}
# Predicates for wait_until (evaluated on every try, unlike a "$(...)" argument).
metric_is() { [ "$(metric "$1" "$2")" = "$3" ]; }
unit_active() { [ "$(systemctl is-active t3backupd)" = active ]; }
has_temps() { [ -n "$(temps_of "$1")" ]; }
logged() { log_since "$1" "${@:3}" | grep -q -- "$2"; }  # logged CURSOR TEXT [journalctl options]
cursor() { journalctl -u t3backupd -n 0 --show-cursor -q | sed -n 's/^-- cursor: //p'; }
# log_since CURSOR [-p err|warning]: the unit's messages after CURSOR, at that priority or
# more urgent. The priority is filtered from the JSON output: `journalctl -p` combined
# with --after-cursor returned nothing on systemd 252 here.
log_since() {
    local max=7
    if [ "${2:-}" = -p ]; then case $3 in err) max=3 ;; warning) max=4 ;; esac; fi
    journalctl -u t3backupd --after-cursor="$1" -o json -q | $PY -c '
import json, sys
for line in sys.stdin:
    entry = json.loads(line)
    message = entry.get("MESSAGE")
    if isinstance(message, str) and int(entry.get("PRIORITY", 6)) <= int(sys.argv[1]):
        print(message)' "$max"
}
pass_done() { log_since "$1" | grep -q '"event": "pass \(finished\|stopped\)"'; }
pass_result() { log_since "$1" | grep '"event": "pass finished"' | tail -1 | sed 's/.*"result": "\([^"]*\)".*/\1/'; }
run_pass() { # run_pass CURSOR: a pass now, signalling the daemon only
    systemctl kill --kill-whom=main -s USR1 t3backupd
    wait_until "${2:-600}" pass_done "$1"
}
temps_of() { find "$DEST/$1" -maxdepth 1 -name '.t3backupd-*' 2>/dev/null; }
snapshots_of() { find "$DEST/$1" -maxdepth 1 -name 'state-*.sqlite' -printf '%f\n' 2>/dev/null | sort; }
worker_of() { pgrep -u "$1" -f 't3backupd.worker' | head -1; }
integrity() { sqlite3 "file:$1?immutable=1" 'PRAGMA integrity_check' 2>&1; }
checksum_ok() { # checksum_ok USER NAME: sha256sum -c as the user, in their directory
    runuser -u "$1" -- sh -c 'cd "$1" && sha256sum --strict --quiet -c -- "$2.sha256"' sh "$DEST/$1" "$2" >/dev/null 2>&1
}
make_db() { # make_db USER SIZE_MB
    local db=/home/$1/.t3/userdata/state.sqlite
    runuser -u "$1" -- mkdir -p "$(dirname "$db")"
    # The sample-database generator is a dev tool (not in the package): from the share.
    runuser -u "$1" -- env PYTHONPATH="$IO/devtools" /usr/bin/python3.11 -s -m t3backupd_dev.sampledb create "$db" \
        --size-mb "$2" --seed "${#1}" --force >/dev/null
}

# Every snapshot verifies (checksum as the user, integrity_check), no snapshot-named file
# without its checksum. Prints the count; false on any problem (each one noted).
verify_all() {
    local user name count=0 bad=0
    for user in "${USERS[@]}"; do
        for name in $(snapshots_of "$user"); do
            count=$((count + 1))
            if ! checksum_ok "$user" "$name"; then note "$user/$name: checksum does not verify"; bad=1; fi
            if [ "$(integrity "$DEST/$user/$name")" != ok ]; then note "$user/$name: integrity_check failed"; bad=1; fi
        done
    done
    echo "$count"
    return "$bad"
}

phase_main() {
    local t0 ready status mark
    # --- fresh host: nothing but the package -------------------------------------------
    [ ! -e "$DEST" ] && [ ! -e /opt/t3backupd ] && [ ! -e /etc/t3backupd ]
    st=$?
    verdict "fresh host has no dest, venv or config before install"
    cp "$IO"/t3backupd_*.deb /root/
    t0=$(now)
    apt-get install -y -q /root/t3backupd_*.deb > /root/apt-install.log 2>&1
    st=$?
    verdict "apt install ./t3backupd_*.deb (offline)" "$(since "$t0") s"
    # No usermap yet: the start is refused (exit 2, one err line naming it), not retried.
    # Under TCG the refused start itself can take a while: wait until it has settled,
    # then longer than RestartSec, so a restart loop would have begun.
    for _ in $(seq 1 120); do
        [ "$(systemctl is-active t3backupd)" = activating ] || break
        sleep 1
    done
    sleep 7
    [ "$(systemctl is-active t3backupd)" = failed ] \
        && [ "$(systemctl show -P ExecMainStatus t3backupd)" = 2 ] \
        && [ "$(systemctl show -P NRestarts t3backupd)" = 0 ] \
        && [ "$(systemctl is-enabled t3backupd)" = enabled ]
    st=$?
    verdict "fresh host without a usermap: start refused (failed, exit 2, not restarted)"
    journalctl -u t3backupd -p err -o cat -q | grep -q '/etc/ttyd-user-map: usermap unreadable'
    st=$?
    verdict "journal priority: the refused start's one line names the usermap, at err (journalctl -p err)"
    echo "# sso-name=unix-user, one per line" > /etc/ttyd-user-map
    systemctl restart t3backupd
    status=$(systemctl is-active t3backupd)
    ready=$($PY -c "import sys; a, b = map(int, sys.argv[1:]); print(f'{(b - a) / 1e6:.2f}')" \
        "$(systemctl show -P InactiveExitTimestampMonotonic t3backupd)" \
        "$(systemctl show -P ActiveEnterTimestampMonotonic t3backupd)")
    [ "$status" = active ] && [ "$(stat -c '%a %U' "$DEST")" = "755 root" ] \
        && [ -n "$(systemctl show -P StatusText t3backupd)" ] && [ "$(systemctl is-enabled t3backupd)" = enabled ]
    st=$?
    verdict "started with a usermap serving nobody (enabled, active, dest 0755 root, Status: line)" "READY ${ready} s after start"
    journalctl -u t3backupd -p warning -o cat -q | grep -q '"usermap serves no user'
    st=$?
    verdict "journal priority: 'usermap serves no user' is at warning (journalctl -p warning)"

    # --- users, a live WAL, reload adding users -----------------------------------------
    for user in "${USERS[@]}"; do useradd --create-home --shell /usr/sbin/nologin "$user"; done
    make_db alice 4
    make_db bob 4
    make_db carol "${T3VM_BIG_MB:-24}"
    # Keep every snapshot (the power-cut checks compare before and after) and give the
    # workers time under TCG.
    sed -i 's/^keep = 14 /keep = 200/' /etc/t3backupd/config.toml
    echo "sso-alice=alice" > /etc/ttyd-user-map
    mark=$(cursor)
    systemctl reload t3backupd
    wait_until 30 metric_is t3backup_users "" 1.0
    st=$?
    verdict "reload: usermap read, 1 user"
    printf 'sso-alice=alice\nsso-bob=bob\nsso-carol=carol\n' > /etc/ttyd-user-map
    mark=$(cursor)
    systemctl reload t3backupd
    wait_until 30 metric_is t3backup_users "" 3.0 && wait_until 30 logged "$mark" 'users added: bob, carol'
    st=$?
    verdict "reload adding users (bob, carol): t3backup_users 3, logged"

    # A row only in alice's WAL (a connection holds it open, no checkpoint).
    runuser -u alice -- $PY -c '
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA wal_autocheckpoint=0")
db.execute("CREATE TABLE IF NOT EXISTS t3vm_marker (x TEXT)")
db.execute("INSERT INTO t3vm_marker VALUES (?)", ("in-the-wal",))
open(sys.argv[2], "w").close()
time.sleep(3600)' /home/alice/.t3/userdata/state.sqlite /tmp/wal-ready &
    local holder=$!
    wait_until 60 test -e /tmp/wal-ready
    local wal_bytes
    wal_bytes=$(stat -c %s /home/alice/.t3/userdata/state.sqlite-wal 2>/dev/null || echo 0)

    # --- a pass as each user -------------------------------------------------------------
    mark=$(cursor)
    t0=$(now)
    run_pass "$mark"
    [ "$(pass_result "$mark")" = "3 ok" ]
    st=$?
    verdict "pass (USR1 to the main process)" "$(pass_result "$mark") in $(since "$t0") s"
    local user name ok=0
    for user in "${USERS[@]}"; do
        name=$(snapshots_of "$user" | tail -1)
        [ -n "$name" ] \
            && [ "$(stat -c '%U:%G %a' "$DEST/$user")" = "$user:$user 700" ] \
            && [ "$(stat -c '%U:%G %a' "$DEST/$user/$name")" = "$user:$user 600" ] \
            && [ "$(stat -c '%U %a' "$DEST/$user/$name.sha256")" = "$user 600" ] \
            && checksum_ok "$user" "$name" \
            && [ "$(integrity "$DEST/$user/$name")" = ok ]
        st=$?
        verdict "snapshot of $user: dir $user 0700, file $user 0600, sha256sum -c, integrity_check" "$name"
    done
    name=$(snapshots_of alice | tail -1)
    [ "$wal_bytes" -gt 0 ] && [ "$(sqlite3 "file:$DEST/alice/$name?immutable=1" \
        "SELECT count(*) FROM t3vm_marker WHERE x = 'in-the-wal'")" = 1 ]
    st=$?
    verdict "WAL rows included (a row only in the -wal, ${wal_bytes} bytes, is in the snapshot)"
    kill "$holder" 2>/dev/null

    # --- metrics -------------------------------------------------------------------------
    local bad=""
    for user in "${USERS[@]}"; do
        [ "$(metric t3backup_attempts_total "user=\"$user\"")" = 1.0 ] || bad="$bad $user:attempts"
        [ "$(metric t3backup_snapshots "user=\"$user\"")" = 1.0 ] || bad="$bad $user:snapshots"
        [ "$(metric t3backup_last_success_timestamp_seconds "user=\"$user\"")" != 0.0 ] || bad="$bad $user:last_success"
    done
    [ -z "$bad" ] && [ "$(metric t3backup_config_last_reload_successful)" = 1.0 ] \
        && [ "$(metric t3backup_next_run_timestamp_seconds)" != 0.0 ]
    st=$?
    verdict "metrics: attempts, snapshots, last success per user; reload ok; next run" "${bad:-all present}"

    # --- a CLI snapshot reaches the daemon's metrics by itself ------------------------------
    local before after
    before=$(metric t3backup_last_success_timestamp_seconds 'user="bob"')
    sleep 1
    t0=$(now)
    t3backupd snapshot --user bob > /root/cli-snapshot.log 2>&1
    bob_changed() { after=$(metric t3backup_last_success_timestamp_seconds 'user="bob"'); [ "$after" != "$before" ]; }
    wait_until 60 bob_changed
    st=$?
    verdict "CLI snapshot shows in the daemon's metrics within a minute" "$(since "$t0") s"

    # --- reload with a broken config -----------------------------------------------------
    cp /etc/t3backupd/config.toml /root/config.good
    echo 'this is [ not toml' >> /etc/t3backupd/config.toml
    mark=$(cursor)
    systemctl reload t3backupd
    local refused=no at_err=no
    wait_until 30 metric_is t3backup_config_last_reload_successful "" 0.0 && refused=yes
    wait_until 30 logged "$mark" 'reload refused' -p err && at_err=yes
    [ "$refused" = yes ] && [ "$at_err" = yes ] && unit_active && [ "$(metric t3backup_users)" = 3.0 ]
    st=$?
    [ "$at_err" = yes ] || journalctl -u t3backupd --after-cursor="$mark" -o json -q \
        | grep -i 'reload' | cut -c1-600 | sed 's/^/NOTE journal: /' >> "$RESULTS"
    verdict "reload with a broken config: refused at err, old config kept, still active" \
        "reload_successful 0: $refused; logged at err: $at_err; $(systemctl is-active t3backupd); users $(metric t3backup_users)"
    cp /root/config.good /etc/t3backupd/config.toml
    systemctl reload t3backupd
    wait_until 30 metric_is t3backup_config_last_reload_successful "" 1.0

    # --- systemctl kill -s USR1 / HUP to every process of the unit during a pass ---------
    mark=$(cursor)
    systemctl kill --kill-whom=main -s USR1 t3backupd
    local pid=""
    find_carol() { pid=$(worker_of carol); [ -n "$pid" ]; }
    wait_until 300 find_carol
    systemctl kill -s USR1 t3backupd
    systemctl kill -s HUP t3backupd
    sleep 0.5
    local alive=no
    kill -0 "$pid" 2>/dev/null && alive=yes
    wait_until 600 pass_done "$mark"
    [ -n "$pid" ] && [ "$(pass_result "$mark")" = "3 ok" ] \
        && ! log_since "$mark" | grep -q 'worker_crashed'
    st=$?
    verdict "systemctl kill -s USR1 and -s HUP (whole unit) during a pass: workers live" \
        "worker $pid alive after: $alive; pass $(pass_result "$mark")"

    # --- stop during a pass -----------------------------------------------------------------
    mark=$(cursor)
    systemctl kill --kill-whom=main -s USR1 t3backupd
    carol_copying() { [ -n "$(temps_of carol)" ]; }
    wait_until 300 carol_copying
    t0=$(now)
    systemctl stop t3backupd
    local took
    took=$(since "$t0")
    local leftovers=""
    for user in "${USERS[@]}"; do leftovers="$leftovers$(temps_of "$user")"; done
    [ -z "$leftovers" ] && $PY -c "import sys; sys.exit(float(sys.argv[1]) >= 15)" "$took" \
        && [ -z "$(log_since "$mark" -p err)" ] \
        && log_since "$mark" | grep -q '"event": "pass stopped"' \
        && log_since "$mark" | grep '"user": "carol"' | grep -q '"status": "stopped"' \
        && [ "$(systemctl show -P Result t3backupd)" = success ]
    st=$?
    verdict "stop during a pass: fast, no temp files, logged as stopped (nothing at err)" \
        "stopped in $took s; leftovers: ${leftovers:-none}"
    systemctl start t3backupd

    # --- watchdog: a SIGSTOPped daemon is restarted ----------------------------------------
    mkdir -p /run/systemd/system/t3backupd.service.d
    printf '[Service]\nWatchdogSec=10\n' > /run/systemd/system/t3backupd.service.d/watchdog.conf
    systemctl daemon-reload
    systemctl restart t3backupd
    local restarts
    restarts=$(systemctl show -P NRestarts t3backupd)
    mark=$(cursor)
    t0=$(now)
    systemctl kill --kill-whom=main -s STOP t3backupd
    restarted() {
        [ "$(systemctl show -P NRestarts t3backupd)" -gt "$restarts" ] && [ "$(systemctl is-active t3backupd)" = active ]
    }
    wait_until 240 restarted \
        && journalctl -u t3backupd --after-cursor="$mark" -q | grep -q "Failed with result 'watchdog'"
    st=$?
    verdict "watchdog: SIGSTOPped daemon killed (Result=watchdog) and restarted" "back in $(since "$t0") s (WatchdogSec=10 drop-in)"
    rm -r /run/systemd/system/t3backupd.service.d
    systemctl daemon-reload
    systemctl restart t3backupd

    # --- journalctl -p err finds a failure ---------------------------------------------------
    runuser -u bob -- sh -c 'head -c 65536 /dev/urandom > "$1"; rm -f "$1-wal" "$1-shm"' sh \
        /home/bob/.t3/userdata/state.sqlite
    mark=$(cursor)
    run_pass "$mark"
    log_since "$mark" -p err | grep '"user": "bob"' | grep -q '"status": "failed"' \
        && ! log_since "$mark" -p err | grep -q '"user": "alice"' \
        && log_since "$mark" -p warning | grep -q '"event": "pass finished"'
    st=$?
    verdict "journalctl -p err shows bob's failure (and not alice's success); -p warning the pass" \
        "$(pass_result "$mark")"
    make_db bob 4

    # --- online systemd-analyze security --------------------------------------------------
    local exposure documented
    documented=$(sed -n 's/.*systemd-analyze security --offline=yes rates this \([0-9.]*\).*/\1/p' /lib/systemd/system/t3backupd.service)
    exposure=$(systemd-analyze security t3backupd 2>/dev/null | sed -n 's/.*Overall exposure level for t3backupd.service: \([0-9.]*\).*/\1/p')
    [ -n "$exposure" ] && [ -n "$documented" ] && $PY -c "import sys; sys.exit(float(sys.argv[1]) > float(sys.argv[2]))" "$exposure" "$documented"
    st=$?
    verdict "systemd-analyze security (online) no higher than documented" "$exposure (documented $documented)"
}

# --- [offsite]: a local-path restic repository under the real unit -----------------------
# As docs/operations.md says: a root-only 0600 password file, [offsite] in the config,
# `offsite init`, a reload. The repository (/srv/t3-offsite) is outside the unit's
# writable paths: first without the ReadWritePaths= drop-in (restic cannot write it: the
# upload fails with reason read_only, the local snapshots still succeed), then with it.
OFFSITE=/srv/t3-offsite
OFFSITE_PASSWORD=/etc/t3backupd/offsite.password
restic_here() { restic --repo "$OFFSITE" --password-file "$OFFSITE_PASSWORD" --no-cache "$@"; }
offsite_logged() { # offsite_logged CURSOR: every user's offsite outcome of this pass is logged
    local user
    for user in "${USERS[@]}"; do
        log_since "$1" | grep '"event": "offsite"' | grep -q "\"user\": \"$user\"" || return 1
    done
}
# The files the daemon may write (the unit's writable paths, the journal, systemd's own
# state) and this script's logs; anything else new since MARK is printed.
written_elsewhere() {
    find / -xdev -newer "$1" \( -type f -o -type d \) 2>/dev/null | grep -Ev \
        '^/(var/log/journal|var/cache/t3backupd|srv/t3-offsite|var/backups/t3-state|var/lib/t3backupd|home|tmp|var/tmp|var/lib/systemd|etc/systemd/system/t3backupd\.service\.d)(/|$)|^/root/[^/.][^/]*\.log$' \
        | head -20
}

phase_offsite() {
    local mark t0 user name bad="" result started
    started=$(now)
    cp /etc/t3backupd/config.toml /root/config.before-offsite
    install -d -m 0700 "$OFFSITE"
    head -c 32 /dev/urandom | base64 > "$OFFSITE_PASSWORD"
    chmod 0600 "$OFFSITE_PASSWORD"
    # keep_last 1 alone: each pass uploads only the newest snapshot; the three users'
    # uploads side by side (less TCG time).
    printf '\n[offsite]\nrepository = "%s"\npassword_file = "%s"\nconcurrency = 3\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n' \
        "$OFFSITE" "$OFFSITE_PASSWORD" >> /etc/t3backupd/config.toml
    t0=$(now)
    t3backupd check-config > /root/offsite-check-config.log 2>&1 \
        && t3backupd offsite init > /root/offsite-init.log 2>&1 \
        && [ -f "$OFFSITE/config" ] && [ "$(stat -c '%U %a' "$OFFSITE_PASSWORD")" = "root 600" ] \
        && grep -q "warning: offsite.repository $OFFSITE is outside" /root/offsite-check-config.log
    st=$?
    verdict "offsite: offsite init (local path $OFFSITE, 0600 root password file); check-config warns: no drop-in" \
        "$(since "$t0") s; $(tail -1 /root/offsite-init.log)"

    # Without the drop-in: ProtectSystem=strict keeps $OFFSITE read-only for the unit.
    local files_before
    files_before=$(find "$OFFSITE" | sort | sha256sum)
    mark=$(cursor)
    systemctl reload t3backupd
    wait_until 60 logged "$mark" '"event": "reloaded"'
    mark=$(cursor)
    t0=$(now)
    run_pass "$mark"
    wait_until 120 offsite_logged "$mark"
    result=$(pass_result "$mark")
    local failures=0
    for user in "${USERS[@]}"; do
        log_since "$mark" -p err | grep '"event": "offsite"' | grep "\"user\": \"$user\"" \
            | grep '"status": "failed"' | grep '"reason": "read_only"' \
            | grep -q "ReadWritePaths=$OFFSITE" && failures=$((failures + 1))
    done
    local counted
    counted=$(metric t3backup_offsite_failures_total 'reason="read_only",user="alice"')
    [ "$counted" = none ] && counted=$(metric t3backup_offsite_failures_total 'user="alice",reason="read_only"')
    [ "$result" = "3 ok" ] && [ "$failures" = 3 ] && [ "$counted" != none ] && [ "$counted" != 0.0 ] \
        && [ "$(find "$OFFSITE" | sort | sha256sum)" = "$files_before" ] \
        && [ "$(restic_here snapshots --json 2>/dev/null)" = "[]" ]
    st=$?
    [ "$failures" = 3 ] || log_since "$mark" | grep '"offsite' | cut -c1-400 | sed 's/^/NOTE journal: /' >> "$RESULTS"
    verdict "offsite without the ReadWritePaths= drop-in: upload fails (read_only, at err), local pass ok, repository untouched" \
        "pass $result; $failures/3 users read_only; failures_total{alice,read_only} $counted; $(since "$t0") s"

    # With the drop-in the docs show (systemctl edit t3backupd writes the same file).
    mkdir -p /etc/systemd/system/t3backupd.service.d
    printf '[Service]\nReadWritePaths=%s\n' "$OFFSITE" > /etc/systemd/system/t3backupd.service.d/offsite.conf
    systemctl daemon-reload
    systemctl restart t3backupd
    wait_until 120 unit_active
    t3backupd check-config > /root/offsite-check-config2.log 2>&1
    local warned=yes
    grep -q "warning: offsite" /root/offsite-check-config2.log || warned=no
    sleep 1
    touch /root/offsite-mark
    sleep 1
    mark=$(cursor)
    t0=$(now)
    run_pass "$mark"
    wait_until 300 offsite_logged "$mark"
    result=$(pass_result "$mark")
    local ok=0
    for user in "${USERS[@]}"; do
        log_since "$mark" | grep '"event": "offsite"' | grep "\"user\": \"$user\"" \
            | grep -q '"status": "ok"' && ok=$((ok + 1))
    done
    [ "$result" = "3 ok" ] && [ "$ok" = 3 ] && [ "$warned" = no ]
    st=$?
    [ "$ok" = 3 ] || log_since "$mark" | grep '"offsite' | cut -c1-400 | sed 's/^/NOTE journal: /' >> "$RESULTS"
    verdict "offsite with the drop-in (check-config reads it): the service's pass uploads every user" "pass $result; $ok/3 ok; $(since "$t0") s; check-config still warns: $warned"
    # Checked before any CLI command runs restic again: what the service wrote, and where.
    local cached elsewhere
    cached=$(find /var/cache/t3backupd/restic -type f -newer /root/offsite-mark 2>/dev/null | wc -l)
    elsewhere=$(written_elsewhere /root/offsite-mark)
    [ "$cached" -gt 0 ] && [ "$(stat -c '%U %a' /var/cache/t3backupd)" = "root 700" ] \
        && [ ! -e /root/.cache/restic ] && [ ! -e /root/.cache ] && [ -z "$elsewhere" ]
    st=$?
    verdict "offsite: restic's cache in /var/cache/t3backupd (CacheDirectory, root 0700), nothing written elsewhere" \
        "$cached cache files; no /root/.cache: $([ -e /root/.cache ] && echo no || echo yes); elsewhere: ${elsewhere:-none}"

    # Read back: list --offsite, restic itself, a restore, the metric.
    t3backupd list --offsite > /root/offsite-list.log 2>&1
    st=$?
    local json
    json=$(restic_here snapshots --json 2>/root/offsite-restic.err)
    [ "$st" -eq 0 ] && [ -n "$json" ]
    st=$?
    for user in "${USERS[@]}"; do
        name=$(snapshots_of "$user" | tail -1)
        grep -A3 "^$user: 1 offsite copy" /root/offsite-list.log | grep -q "^  $name " || bad="$bad $user:list"
        echo "$json" | $PY -c '
import json, sys
user, name = sys.argv[1], sys.argv[2]
tags = [set(s.get("tags") or []) for s in json.load(sys.stdin)]
sys.exit(not any({"t3backupd", "user=" + user, "name=" + name} <= t for t in tags))' "$user" "$name" \
            || bad="$bad $user:restic"
    done
    [ "$st" -eq 0 ] && [ -z "$bad" ]
    st=$?
    [ -z "$bad" ] || sed 's/^/NOTE list: /' /root/offsite-list.log >> "$RESULTS"
    verdict "offsite: list --offsite and restic snapshots --json show each user's newest snapshot" "${bad:-all 3 users}"

    name=$(snapshots_of alice | tail -1)
    rm -f /tmp/x
    t0=$(now)
    t3backupd restore --user alice --from offsite --to /tmp/x > /root/offsite-restore.log 2>&1
    st=$?
    local want got
    want=$(cut -d' ' -f1 "$DEST/alice/$name.sha256")
    got=$(sha256sum /tmp/x 2>/dev/null | cut -d' ' -f1)
    [ "$st" -eq 0 ] && [ -n "$want" ] && [ "$got" = "$want" ] \
        && [ "$(sha256sum < "$DEST/alice/$name" | cut -d' ' -f1)" = "$want" ] \
        && [ "$(stat -c %U /tmp/x)" = alice ] && [ "$(integrity /tmp/x)" = ok ]
    st=$?
    verdict "offsite: restore --from offsite --to /tmp/x is byte-identical (sha256), alice's, integrity ok" \
        "$name; $(since "$t0") s; $(tail -1 /root/offsite-restore.log | cut -c1-160)"

    local missing=""
    for user in "${USERS[@]}"; do
        result=$(metric t3backup_offsite_last_success_timestamp_seconds "user=\"$user\"")
        [ "$result" != none ] && [ "$result" != 0.0 ] || missing="$missing $user"
    done
    [ -z "$missing" ]
    st=$?
    verdict "offsite: t3backup_offsite_last_success_timestamp_seconds on the endpoint for each user" \
        "missing:${missing:- none}"

    # Back to the config without [offsite] for the power cuts (keeps their passes short).
    # The password file and repository are the operator's, not the package's: removed
    # here, or `apt purge` would rightly leave /etc/t3backupd behind.
    rm -r /etc/systemd/system/t3backupd.service.d "$OFFSITE" "$OFFSITE_PASSWORD"
    cp /root/config.before-offsite /etc/t3backupd/config.toml
    systemctl daemon-reload
    systemctl restart t3backupd
    wait_until 120 unit_active
    note "offsite checks took $(since "$started") s"
}

# After a power cut: snapshots that were there before the cut pass (and any the guest saw
# published by a finished worker) still there; every snapshot verifies; then a pass works.
after_cut() {
    local n=$1 point=$2 count missing="" user name leftovers="" mark
    count=$(verify_all)
    local verified=$?
    if [ -f "$IO/cut-$n-durable.txt" ]; then
        while read -r user name; do
            [ -e "$DEST/$user/$name" ] || missing="$missing $user/$name"
        done < "$IO/cut-$n-durable.txt"
    fi
    for user in "${USERS[@]}"; do leftovers="$leftovers $(temps_of "$user" | xargs -r -n1 basename)"; done
    [ "$verified" -eq 0 ] && [ -z "$missing" ]
    st=$?
    verdict "power cut $n ($point): every snapshot verifies, none lost, no partial snapshot" \
        "$count snapshots; missing:${missing:- none}; temp files left for the next pass:${leftovers// / }"
    wait_until 120 unit_active
    mark=$(cursor)
    run_pass "$mark"
    leftovers=""
    for user in "${USERS[@]}"; do leftovers="$leftovers$(temps_of "$user")"; done
    count=$(verify_all)
    verified=$?
    [ "$(pass_result "$mark")" = "3 ok" ] && [ -z "$leftovers" ] && [ "$verified" -eq 0 ]
    st=$?
    verdict "power cut $n ($point): next pass succeeds, temp files cleaned" "$(pass_result "$mark"); $count snapshots verify"
}

# Start a pass and announce the cut at POINT; the host kills the VM then.
cut_at() {
    local n=$1 point=$2 user mark before
    wait_until 120 unit_active
    : > "$IO/cut-$n-durable.txt"
    for user in "${USERS[@]}"; do
        for name in $(snapshots_of "$user"); do echo "$user $name" >> "$IO/cut-$n-durable.txt"; done
    done
    before=$(snapshots_of alice)
    sync
    mark=$(cursor)
    systemctl kill --kill-whom=main -s USR1 t3backupd
    case $point in
        copy)  # alice's copy is being written
            wait_until 300 has_temps alice && sleep 0.3 ;;
        published)  # alice's new snapshot just got its name (temp unlink, dir fsync pending)
            new_alice() { [ "$(snapshots_of alice)" != "$before" ]; }
            wait_until 300 new_alice ;;
        next-user)  # alice's worker finished (fsynced); bob's copy starts
            wait_until 300 has_temps bob
            comm -13 <(echo "$before") <(snapshots_of alice) | sed 's/^/alice /' >> "$IO/cut-$n-durable.txt" ;;
        carol-verify)  # carol's large copy is being sealed/verified: cut 2 s into it
            wait_until 600 has_temps carol && sleep 2 ;;
    esac
    sync "$IO/cut-$n-durable.txt" 2>/dev/null || true
    echo "T3VM-CUT-NOW $n $point"
    echo "T3VM-CUT-NOW $n $point" > /dev/ttyS0
    sleep 300
    fail "power cut $n ($point): the host did not cut the power"
}

phase_final() {
    local user
    apt-get remove -y -q t3backupd > /root/apt-remove.log 2>&1
    [ "$(systemctl is-active t3backupd)" != active ] && [ -f /etc/t3backupd/config.toml ] \
        && [ ! -e /opt/t3backupd ] && [ -n "$(snapshots_of alice)" ] \
        && dpkg-query -W -f='${Status}' t3backupd | grep -q 'config-files' \
        && ! pgrep -f t3backupd.worker >/dev/null
    st=$?
    verdict "apt remove: stopped, venv gone, config kept, backups kept" "$(dpkg-query -W -f='${Status}' t3backupd)"
    apt-get purge -y -q t3backupd > /root/apt-purge.log 2>&1
    [ ! -e /etc/t3backupd ] && ! dpkg-query -W t3backupd >/dev/null 2>&1 \
        && [ ! -e /etc/systemd/system/multi-user.target.wants/t3backupd.service ] \
        && [ ! -e /var/lib/systemd/deb-systemd-helper-enabled/t3backupd.service.dsh-also ] \
        && [ -n "$(snapshots_of alice)" ]
    st=$?
    verdict "apt purge: config and enablement gone, backups kept in $DEST"
}

say "BOOT phase=$PHASE point=${POINT:-} cut=${CUT:-} uptime=$(cut -d' ' -f1 /proc/uptime)"
case $PHASE in
    main) phase_main; [ "${T3VM_OFFSITE:-1}" = 1 ] && phase_offsite ;;
    cut)
        [ "$CUT" -gt 1 ] && after_cut $((CUT - 1)) "$(cat "$IO/cut-$((CUT - 1))-point" 2>/dev/null)"
        echo "$POINT" > "$IO/cut-$CUT-point"
        cut_at "$CUT" "$POINT" ;;
    final)
        [ "${CUT:-0}" -gt 0 ] && after_cut "$CUT" "$(cat "$IO/cut-$CUT-point" 2>/dev/null)"
        phase_final ;;
esac
say "DONE phase=$PHASE"

#!/usr/bin/env bash
# A 3-node certmq cluster on one machine, from Debian packages (no containers, nothing
# downloaded): PostgreSQL for the registry, NATS with JetStream for what moves between
# nodes, HAProxy in front (mode tcp, PROXY protocol v2). For trying the cluster out and
# for the cluster tests (tests/cluster.rs); docs/cluster.md explains it.
#
#   dist/cluster/cluster.sh start [DIR]    # default DIR: ./cluster-data
#   dist/cluster/cluster.sh stop  [DIR]
#   dist/cluster/cluster.sh status [DIR]
#
# Needs: apt-get install -y postgresql nats-server haproxy
# Environment:
#   CERTMQ_BIN             the certmq binary (default: target/release/certmq, built if missing)
#   CERTMQ_CLUSTER_PORTS   "auto" picks free ports for everything (the tests do);
#                          default: fixed ports (below)
#   CERTMQ_CLUSTER_NODES   number of nodes (default 3)
#   CERTMQ_NODE_ARGS       more `certmq serve` flags for every node (e.g. for benchmarks
#                          from one address: --handshakes-per-ip 0 --max-pending-per-ip 0)
#
# Everything it starts runs as a child of this script's session, with its PID in
# DIR/pids/, and `stop` ends exactly those processes. DIR/cluster.env holds the
# addresses, the admin token and the master key (a secret: the file is 0600).
set -euo pipefail

cmd=${1:-}
dir=${2:-./cluster-data}
nodes=${CERTMQ_CLUSTER_NODES:-3}
repo=$(cd "$(dirname "$0")/../.." && pwd)

starting=0
die() {
    echo "cluster.sh: $*" >&2
    # A start that failed half way ends what it started.
    if [ "$starting" = 1 ]; then starting=0; stop >/dev/null 2>&1 || true; fi
    exit 1
}

# N free loopback ports, all different (held open together while they are picked).
free_ports() {
    python3 -c 'import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))' "$1"
}

# Runs a PostgreSQL program as the postgres user when we are root (it refuses root).
pg_run() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$bin" ] && [ -x "$bin/initdb" ] || die "PostgreSQL is not installed (apt-get install -y postgresql)"
    echo "$bin"
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local until=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $until ] || die "$what did not come up (see $dir/*.log)"
        sleep 0.2
    done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
    for p in nats-server haproxy python3 curl; do
        command -v "$p" >/dev/null || die "$p is missing (apt-get install -y postgresql nats-server haproxy python3 curl)"
    done
    local pgbin
    pgbin=$(pg_bin)
    [ ! -e "$dir/pids" ] || die "$dir already holds a running cluster: stop it first ($0 stop $dir)"
    mkdir -p "$dir/pids"
    # Traversable (PostgreSQL runs as its own user below it), not listable; the secrets
    # file itself is 0600.
    chmod 711 "$dir"
    dir=$(cd "$dir" && pwd)
    starting=1

    local bin=${CERTMQ_BIN:-$repo/target/release/certmq}
    if [ ! -x "$bin" ]; then
        echo "building certmq (release)…"
        (cd "$repo" && cargo build --release --quiet --bin certmq)
    fi

    local pg_port nats_port lb_mqtt lb_admin key token
    declare -a mqtt admin node_lb
    local again=0
    if [ -f "$dir/cluster.env" ]; then
        # A cluster stopped earlier: the same ports, secrets and data.
        again=1
        # shellcheck disable=SC1091
        . "$dir/cluster.env"
        nodes=$NODES; pg_port=$PG_PORT; nats_port=${NATS_URL##*:}
        lb_mqtt=${LB_MQTT##*:}; lb_admin=${LB_ADMIN##*:}; key=$MASTER_KEY; token=$ADMIN_TOKEN
        for i in $(seq 1 "$nodes"); do
            local v
            v="NODE${i}_MQTT"; mqtt[i]=${!v##*:}
            v="NODE${i}_ADMIN"; admin[i]=${!v##*:}
            v="NODE${i}_LB"; node_lb[i]=${!v##*:}
        done
    elif [ "${CERTMQ_CLUSTER_PORTS:-}" = auto ]; then
        local ports
        read -r -a ports <<<"$(free_ports $((4 + 3 * nodes)))"
        pg_port=${ports[0]}; nats_port=${ports[1]}; lb_mqtt=${ports[2]}; lb_admin=${ports[3]}
        for i in $(seq 1 "$nodes"); do
            mqtt[i]=${ports[4 + 3 * (i - 1)]}
            admin[i]=${ports[5 + 3 * (i - 1)]}
            node_lb[i]=${ports[6 + 3 * (i - 1)]}
        done
    else
        pg_port=15432; nats_port=14222; lb_mqtt=8883; lb_admin=8080
        for i in $(seq 1 "$nodes"); do
            mqtt[i]=$((18830 + i)); admin[i]=$((18080 + i)); node_lb[i]=$((8883 + i))
        done
    fi

    if [ "$again" = 0 ]; then
        # Secrets shared by every node: the master key seals private keys in the registry.
        key=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
        token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
    fi

    echo "PostgreSQL on 127.0.0.1:$pg_port"
    if [ "$again" = 0 ]; then
        mkdir -p "$dir/pg"
        if [ "$(id -u)" = 0 ]; then
            chown postgres:postgres "$dir/pg"
            runuser -u postgres -- test -w "$dir/pg" \
                || die "the postgres user cannot reach $dir/pg: every directory above it must be traversable (chmod o+x)"
        fi
        pg_run "$pgbin/initdb" -D "$dir/pg/data" -A trust -U postgres --no-sync >"$dir/pg/initdb.log" 2>&1 \
            || die "initdb failed: $(tail -3 "$dir/pg/initdb.log")"
    fi
    pg_run "$pgbin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/postgres.log" -w \
        -o "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1" start >/dev/null \
        || die "PostgreSQL did not start: $(tail -3 "$dir/pg/postgres.log")"
    head -1 "$dir/pg/data/postmaster.pid" >"$dir/pids/postgres.pid"
    if [ "$again" = 0 ]; then
        pg_run "$pgbin/psql" -h "$dir/pg" -p "$pg_port" -U postgres -q -c "CREATE DATABASE certmq" postgres
    fi

    echo "NATS (JetStream) on 127.0.0.1:$nats_port"
    nats-server -js -sd "$dir/nats" -a 127.0.0.1 -p "$nats_port" -l "$dir/nats.log" >/dev/null 2>&1 &
    echo $! >"$dir/pids/nats.pid"
    wait_for 10 "nats-server" port_open "$nats_port"

    for i in $(seq 1 "$nodes"); do
        echo "certmq node$i: MQTT 127.0.0.1:${mqtt[i]} (PROXY v2 only), admin http://127.0.0.1:${admin[i]}"
        CERTMQ_MASTER_KEY=$key CERTMQ_ADMIN_TOKEN=$token "$bin" serve \
            --data-dir "$dir/node$i" --node-id "node$i" \
            --mqtt "127.0.0.1:${mqtt[i]}" --admin "127.0.0.1:${admin[i]}" \
            --store "postgres://postgres@127.0.0.1:$pg_port/certmq" \
            --cluster "nats://127.0.0.1:$nats_port" --proxy-protocol \
            ${CERTMQ_NODE_ARGS:-} >"$dir/node$i.log" 2>&1 &
        echo $! >"$dir/pids/node$i.pid"
        # The first node migrates the empty database; the others start after it.
        wait_for 30 "certmq node$i" grep -q '^certmq ready ' "$dir/node$i.log"
    done

    # Every proxied connection takes two descriptors in HAProxy.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    local maxconn=$((($(ulimit -n) - 200) / 2))
    [ "$maxconn" -le 200000 ] || maxconn=200000
    {
        printf 'global\n  maxconn %s\n' "$maxconn"
        printf 'defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n'
        printf 'frontend mqtt\n  bind 127.0.0.1:%s\n  default_backend certmq\n' "$lb_mqtt"
        printf 'backend certmq\n  balance leastconn\n  option httpchk GET /readyz\n'
        for i in $(seq 1 "$nodes"); do
            printf '  server node%s 127.0.0.1:%s send-proxy-v2 check port %s inter 1s fall 2 rise 1\n' \
                "$i" "${mqtt[i]}" "${admin[i]}"
        done
        printf 'frontend admin\n  bind 127.0.0.1:%s\n  default_backend admin\n' "$lb_admin"
        printf 'backend admin\n  balance roundrobin\n'
        for i in $(seq 1 "$nodes"); do
            printf '  server node%s 127.0.0.1:%s check\n' "$i" "${admin[i]}"
        done
        # One frontend per node, to reach a given node through the balancer.
        for i in $(seq 1 "$nodes"); do
            printf 'frontend node%s\n  bind 127.0.0.1:%s\n  default_backend node%s\n' "$i" "${node_lb[i]}" "$i"
            printf 'backend node%s\n  server node%s 127.0.0.1:%s send-proxy-v2\n' "$i" "$i" "${mqtt[i]}"
        done
    } >"$dir/haproxy.cfg"
    echo "HAProxy: MQTT 127.0.0.1:$lb_mqtt (any node), admin http://127.0.0.1:$lb_admin"
    haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
    echo $! >"$dir/pids/haproxy.pid"
    # Every frontend, and from this HAProxy (a port taken by another process since it
    # was picked would answer too, while HAProxy exited on it).
    local hp
    hp=$(cat "$dir/pids/haproxy.pid")
    for port in "$lb_mqtt" "$lb_admin" "${node_lb[@]}"; do
        wait_for 10 "haproxy on port $port" port_open "$port"
    done
    kill -0 "$hp" 2>/dev/null || die "haproxy exited (see $dir/haproxy.log)"

    {
        echo "CLUSTER_DIR=$dir"
        echo "NODES=$nodes"
        echo "PG_PORT=$pg_port"
        echo "PG_URL=postgres://postgres@127.0.0.1:$pg_port/certmq"
        echo "NATS_URL=nats://127.0.0.1:$nats_port"
        echo "LB_MQTT=127.0.0.1:$lb_mqtt"
        echo "LB_ADMIN=127.0.0.1:$lb_admin"
        for i in $(seq 1 "$nodes"); do
            echo "NODE${i}_MQTT=127.0.0.1:${mqtt[i]}"
            echo "NODE${i}_ADMIN=127.0.0.1:${admin[i]}"
            echo "NODE${i}_LB=127.0.0.1:${node_lb[i]}"
        done
        echo "ADMIN_TOKEN=$token"
        echo "MASTER_KEY=$key"
    } >"$dir/cluster.env"
    chmod 600 "$dir/cluster.env"
    starting=0
    echo "ready: $dir/cluster.env (admin token and addresses); stop with: $0 stop $dir"
}

stop_pid() { # stop_pid NAME: SIGTERM, then SIGKILL after 15 s
    local f="$dir/pids/$1.pid" pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

stop() {
    [ -d "$dir/pids" ] || die "no cluster in $dir"
    stop_pid haproxy
    for f in "$dir"/pids/node*.pid; do
        [ -e "$f" ] && stop_pid "$(basename "$f" .pid)"
    done
    stop_pid nats
    if [ -f "$dir/pids/postgres.pid" ]; then
        pg_run "$(pg_bin)/pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null 2>&1 || stop_pid postgres
        rm -f "$dir/pids/postgres.pid"
    fi
    rmdir "$dir/pids" 2>/dev/null || true
    echo "stopped (data kept in $dir)"
}

status() {
    [ -d "$dir/pids" ] || die "no cluster in $dir"
    for f in "$dir"/pids/*.pid; do
        local name pid
        name=$(basename "$f" .pid)
        pid=$(cat "$f")
        if kill -0 "$pid" 2>/dev/null; then echo "$name: running (pid $pid)"; else echo "$name: not running"; fi
    done
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

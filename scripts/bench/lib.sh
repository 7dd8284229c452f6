# shellcheck shell=bash
# Shared helpers for the side-by-side benchmarks in scripts/bench/. Source it;
# do not run it. Every function is prefixed bench_.
#
#   bench_init                      set strict mode, the cleanup trap, the run's
#                                   temporary directory BENCH_RUN_DIR
#   bench_free_port                 print a free loopback TCP port (asks the OS)
#   bench_wait_for_port PORT [SECS] [PID]
#                                   poll 127.0.0.1:PORT until it accepts; fail after
#                                   SECS (default 10) or as soon as PID exits
#   bench_spawn LOG CMD...          start CMD in the background, log to LOG, track
#                                   its pid for cleanup; sets BENCH_PID
#   bench_stop PID                  TERM, wait up to 5 s, then KILL
#   bench_start_memcached NAME      memcached on a free port; sets NAME_port, NAME_pid
#   bench_tmpdir                    print a new temporary directory, removed at exit
#   bench_build PACKAGE...          one `cargo build --release -p …` for the packages;
#                                   sets BENCH_LOADGEN and BENCH_SHOAL (binary paths)
#   bench_loadgen ARGS...           run shoal-loadgen; its JSON report on stdout
#   bench_ab ROUNDS RESULTS WORKLOAD LABEL_A FN_A LABEL_B FN_B
#                                   run FN_A, FN_B, FN_A, FN_B… ROUNDS times; append
#                                   each JSON report, tagged, to the file RESULTS
#   bench_report RESULTS LABEL_A LABEL_B TITLE
#                                   print the table of medians and ratios B/A, then
#                                   a markdown section for docs/benchmarks.md; fails
#                                   when any run saw errors
#   bench_rounds ROUNDS RESULTS WORKLOAD LABEL FN [LABEL FN]...
#                                   like bench_ab for any number of targets; each
#                                   round starts one target later (round 1: A B C,
#                                   round 2: B C A, …) so no target always runs first
#   bench_report_multi RESULTS TITLE TARGETS RATIOS [GOAL]
#                                   medians per target and the listed ratios
#                                   (comma lists: TARGETS a,b,c; RATIOS b/a,c/a; GOAL
#                                   b/a marks whether b reached >= 1.0x a's ops/s at
#                                   <= a's p99); fails when any run saw errors
#   bench_read_addr LOG WORD [SECS] [PID]
#                                   wait for a line "WORD host:PORT" in LOG (as
#                                   `shoal node`/`shoal proxy` print them); print PORT
#   bench_wait_http_ok URL [SECS] [PID]
#                                   poll URL until it answers 2xx
#   bench_start_nutcracker NAME SERVER...
#                                   twemproxy (ketama, md5) over SERVER (host:port)…
#                                   on a free port; sets NAME_port, NAME_pid
#   bench_start_shoal NAME LOGDIR ARGS...
#                                   `shoal ARGS… --port 0 --admin-port 0`; reads the
#                                   ports it prints; sets NAME_port, NAME_admin, NAME_pid
#
# Rules from shared/TESTING.md: loopback only, ports from the OS, readiness by
# polling (never a fixed sleep), A/B alternated in one invocation, medians of
# at least 3 rounds, results as ratios.

BENCH_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_ROOT=$(cd "$BENCH_LIB_DIR/../.." && pwd)
BENCH_PIDS=()
BENCH_TMPDIRS=()
BENCH_RUN_DIR=''

# Every directory bench_tmpdir makes lives under BENCH_RUN_DIR, made here:
# callers write `dir=$(bench_tmpdir)`, and that subshell cannot add to
# BENCH_TMPDIRS, so directories it registered itself were never removed.
bench_init() {
    set -euo pipefail
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    BENCH_RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bench.XXXXXX")
    BENCH_TMPDIRS+=("$BENCH_RUN_DIR")
}

bench_log() {
    printf '%s\n' "bench: $*" >&2
}

bench_die() {
    bench_log "$*"
    exit 1
}

bench_cleanup() {
    local pid dir
    for pid in "${BENCH_PIDS[@]}"; do
        bench_stop "$pid"
    done
    BENCH_PIDS=()
    for dir in "${BENCH_TMPDIRS[@]}"; do
        rm -rf -- "$dir"
    done
    BENCH_TMPDIRS=()
}

bench_free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

bench_wait_for_port() {
    local port=$1 secs=${2:-10} pid=${3:-}
    local deadline=$((SECONDS + secs))
    while ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            bench_log "process $pid exited before 127.0.0.1:$port accepted connections"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            bench_log "127.0.0.1:$port did not accept connections within ${secs}s"
            return 1
        fi
        sleep 0.05
    done
}

bench_spawn() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    BENCH_PID=$!
    BENCH_PIDS+=("$BENCH_PID")
}

bench_stop() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

bench_tmpdir() {
    local dir
    if [[ -n $BENCH_RUN_DIR ]]; then
        dir=$(mktemp -d "$BENCH_RUN_DIR/tmp.XXXXXX")
    else
        dir=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bench.XXXXXX")
        BENCH_TMPDIRS+=("$dir")
    fi
    printf '%s\n' "$dir"
}

# The port is free when asked for but could be taken before memcached binds
# it: try a few ports before giving up.
bench_start_memcached() {
    local name=$1 port log attempt
    log="$(bench_tmpdir)/memcached.log"
    for attempt in 1 2 3; do
        port=$(bench_free_port)
        bench_spawn "$log" memcached -u root -l 127.0.0.1 -p "$port" -t 4 -m 1024
        if bench_wait_for_port "$port" 10 "$BENCH_PID"; then
            printf -v "${name}_port" '%s' "$port"
            printf -v "${name}_pid" '%s' "$BENCH_PID"
            bench_log "memcached ($name) pid $BENCH_PID on 127.0.0.1:$port"
            return 0
        fi
        bench_stop "$BENCH_PID"
        bench_log "memcached did not start (attempt $attempt): $(tail -n 3 "$log")"
    done
    return 1
}

bench_build() {
    local args=() package
    for package in "$@"; do
        args+=(-p "$package")
    done
    bench_log "building ${*} (release)"
    (cd "$BENCH_ROOT" && cargo build --release --quiet "${args[@]}") >&2 || return
    # What was built, for the report (the tree may move on during a long run).
    BENCH_REVISION=$(git -C "$BENCH_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git -C "$BENCH_ROOT" status --porcelain 2>/dev/null) ]]; then
        BENCH_REVISION+=-dirty
    fi
    export BENCH_REVISION
    local target=${CARGO_TARGET_DIR:-$BENCH_ROOT/target}
    BENCH_LOADGEN=$target/release/shoal-loadgen
    # shellcheck disable=SC2034 # used by the scripts that source this file
    BENCH_SHOAL=$target/release/shoal
}

# Exit status 3 means the run completed but saw errors: the JSON is still
# printed and bench_report flags it, so it is not an error here.
bench_loadgen() {
    local rc=0
    "$BENCH_LOADGEN" "$@" || rc=$?
    if ((rc != 0 && rc != 3)); then
        bench_log "shoal-loadgen failed (exit $rc): $*"
        return "$rc"
    fi
}

bench_ab() {
    local rounds=$1 results=$2 workload=$3
    local labels=("$4" "$6") fns=("$5" "$7")
    local round i json
    for ((round = 1; round <= rounds; round++)); do
        for i in 0 1; do
            bench_log "$workload: round $round/$rounds, ${labels[i]}"
            json=$("${fns[i]}") || json=null
            [[ -n $json ]] || json=null
            printf '{"workload":"%s","target":"%s","round":%d,"report":%s}\n' \
                "$workload" "${labels[i]}" "$round" "$json" >>"$results"
        done
    done
}

# BENCH_CONTEXT (optional): a paragraph for the markdown section, e.g. the
# server versions and the workload flags.
bench_report() {
    BENCH_ROOT="$BENCH_ROOT" BENCH_CONTEXT="${BENCH_CONTEXT:-}" \
        python3 "$BENCH_LIB_DIR/summarize.py" "$@"
}

# One round = every target once. Round r starts at target (r-1) mod n, so a
# target that suffers from running right after another (a warm cache, a
# background job's rhythm) does not always suffer.
bench_rounds() {
    local rounds=$1 results=$2 workload=$3
    shift 3
    local labels=() fns=()
    while (($#)); do
        labels+=("$1")
        fns+=("$2")
        shift 2
    done
    local n=${#labels[@]} round k i json
    for ((round = 1; round <= rounds; round++)); do
        for ((k = 0; k < n; k++)); do
            i=$(((round - 1 + k) % n))
            bench_log "$workload: round $round/$rounds, ${labels[i]}"
            json=$("${fns[i]}") || json=null
            [[ -n $json ]] || json=null
            printf '{"workload":"%s","target":"%s","round":%d,"report":%s}\n' \
                "$workload" "${labels[i]}" "$round" "$json" >>"$results"
        done
    done
}

bench_report_multi() {
    local results=$1 title=$2 targets=$3 ratios=$4 goal=${5:-}
    local args=(--targets "$targets" --ratios "$ratios")
    [[ -z $goal ]] || args+=(--goal "$goal")
    BENCH_ROOT="$BENCH_ROOT" BENCH_CONTEXT="${BENCH_CONTEXT:-}" \
        python3 "$BENCH_LIB_DIR/summarize.py" "${args[@]}" "$results" "$title"
}

bench_read_addr() {
    local log=$1 word=$2 secs=${3:-30} pid=${4:-}
    local deadline=$((SECONDS + secs)) line
    while :; do
        line=$(grep -m1 "^$word " "$log" 2>/dev/null || true)
        if [[ -n $line ]]; then
            printf '%s\n' "${line##*:}"
            return 0
        fi
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            bench_log "process $pid exited before printing '$word': $(tail -n 5 "$log")"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            bench_log "no '$word' line in $log within ${secs}s"
            return 1
        fi
        sleep 0.05
    done
}

bench_wait_http_ok() {
    local url=$1 secs=${2:-30} pid=${3:-}
    local deadline=$((SECONDS + secs))
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            bench_log "process $pid exited before $url answered"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            bench_log "$url did not answer 2xx within ${secs}s"
            return 1
        fi
        sleep 0.05
    done
}

# twemproxy 0.5 as Debian ships it: one pool, memcache ASCII, ketama over
# MD5 (its libmemcached-compatible ring), weight 1 each, hosts never ejected.
bench_start_nutcracker() {
    local name=$1 dir port stats attempt server
    shift
    dir=$(bench_tmpdir)
    for attempt in 1 2 3; do
        port=$(bench_free_port)
        stats=$(bench_free_port)
        {
            printf 'shoal:\n  listen: 127.0.0.1:%s\n' "$port"
            printf '  hash: md5\n  distribution: ketama\n  auto_eject_hosts: false\n'
            printf '  server_connections: 1\n  servers:\n'
            for server in "$@"; do
                printf '   - %s:1\n' "$server"
            done
        } >"$dir/nutcracker.yml"
        bench_spawn "$dir/nutcracker.out" nutcracker -c "$dir/nutcracker.yml" \
            -s "$stats" -a 127.0.0.1 -o "$dir/nutcracker.log"
        if bench_wait_for_port "$port" 10 "$BENCH_PID"; then
            printf -v "${name}_port" '%s' "$port"
            printf -v "${name}_pid" '%s' "$BENCH_PID"
            bench_log "nutcracker ($name) pid $BENCH_PID on 127.0.0.1:$port (stats $stats)"
            return 0
        fi
        bench_stop "$BENCH_PID"
        bench_log "nutcracker did not start (attempt $attempt): $(tail -n 3 "$dir/nutcracker.log" "$dir/nutcracker.out" 2>/dev/null)"
    done
    return 1
}

# Ports come from the OS (--port 0): no race with other processes.
bench_start_shoal() {
    local name=$1 logdir=$2 port admin
    shift 2
    bench_spawn "$logdir/$name.log" "$BENCH_SHOAL" "$@" --port 0 --admin-port 0
    port=$(bench_read_addr "$logdir/$name.log" data 60 "$BENCH_PID") || return 1
    admin=$(bench_read_addr "$logdir/$name.log" admin 10 "$BENCH_PID") || return 1
    bench_wait_for_port "$port" 10 "$BENCH_PID" || return 1
    printf -v "${name}_port" '%s' "$port"
    printf -v "${name}_admin" '%s' "$admin"
    printf -v "${name}_pid" '%s' "$BENCH_PID"
    bench_log "shoal $1 ($name) pid $BENCH_PID on 127.0.0.1:$port (admin $admin)"
}

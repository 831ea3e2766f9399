#!/usr/bin/env bash
# The crash test at scale (not run by CI; it takes a while): N chain tasks
# (normalize -> count_words -> top_k) on K `corral worker` processes, while
# workers are SIGKILLed at random and the Redis server is SIGKILLed and
# restarted from its append-only file; then every task's final state is read
# straight from Redis and checked. Exits 0 only if no task was lost and every
# result is correct.
#
# What it does, in order:
#   1. builds `corral` and the `crash_check` example (release, in
#      $CARGO_TARGET_DIR or target/) and the job components if missing;
#   2. starts its own redis-server on a free loopback port (never 6379), in a
#      temp dir, with `--appendonly yes --appendfsync always` (see --fsync);
#   3. registers job `crash-chain`, starts K workers (lease --lease), and
#      starts the producer, which enqueues N tasks over Q queues in batches
#      at --rate tasks/s and appends every task it was *told* was stored to
#      an ids file (a batch whose call failed is sent again);
#   4. while tasks run: SIGKILLs a random worker and starts a new one M
#      times, spread over the run (at every N/(M+1) completed tasks); SIGKILLs
#      redis-server R times and starts it again on the same data directory,
#      down for 0-3 s each time: the first while the producer is half way,
#      the others spread over the run, every other one during an AOF
#      rewrite (BGREWRITEAOF just before); a worker that exits on its own
#      (none should) is restarted and counted;
#   5. waits until nothing is pending, scheduled or active (bounded by
#      --timeout), stops the workers, SIGKILLs redis-server one last time
#      and restarts it from its AOF, so the check reads only what was
#      persisted;
#   6. `crash_check check` reads every confirmed task from Redis and checks
#      it is completed with exactly the result the chain computes from its
#      input, and reads the workers' logs for handlers that ran twice and
#      for any attempt that started before a saved checkpoint.
#
# What "none lost" means: every task the producer was told was enqueued
# (its enqueue call answered success, or a retry found it stored) ends
# completed. With `--appendfsync always` (the default) Redis writes each
# command to the AOF before it answers, so nothing it acknowledged is lost
# when the process is killed. With `--fsync everysec` Redis may, in the
# worst case, postpone the AOF write while a background fsync is slow (up to
# 2 s) and answer meanwhile: a kill -9 then loses what it answered in that
# window, tasks or checkpoints; the check reports them as lost, or as
# checkpoint regressions. (A crash of the machine, which this test does not
# simulate, loses nothing acknowledged with always, up to a second or two
# with everysec.)
#
# Why `aof-load-truncated no` by default: a SIGKILL can cut Redis's AOF
# write short (the kernel ends a write() early on a fatal signal), and
# every Corral script's writes are one MULTI/EXEC block in the AOF. With
# Redis's default `aof-load-truncated yes`, Redis 7.0 (Debian's 7.0.15 here)
# truncates such a torn block *inside* its MULTI and keeps the dangling
# MULTI: the writes it acknowledges after that restart are swallowed by the
# open block and lost at the next restart, and once that file is no longer
# the last one Redis refuses to start ("the truncated file is not the last
# file"). Valkey fixed this (valkey-io/valkey#4342). With `no`, Redis
# refuses the torn file at once and `redis-check-aof --fix` cuts it before
# the MULTI, which loses nothing Redis had acknowledged; the script does
# that as an operator would, and counts it. `--aof-load-truncated yes`
# reproduces the bug.
#
# Everything it starts is stopped on exit (trap); the run directory (Redis
# data, logs, ids file) is removed on success unless --keep, and kept on
# failure. Every wait is bounded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

usage() {
    cat <<'EOF'
usage: scripts/crash-at-scale.sh [options]

  --tasks N           chain tasks to run (default 100000)
  --workers K         worker processes at once (default 3)
  --concurrency C     tasks per worker at once (default 8)
  --kills M           worker SIGKILLs (default max(5, N/1000))
  --redis-restarts R  redis-server SIGKILLs and restarts during the run
                      (default max(3, N/20000)), plus one before the check
  --queues Q          queues the tasks are spread over (default 4; at most
                      100000 tasks per queue, the broker's retention bound)
  --lease D           workers' lease, e.g. 3s (default 3s)
  --fsync MODE        always | everysec (default always)
  --aof-load-truncated yes|no
                      Redis's own repair of a torn AOF tail (yes, Redis's
                      default) or redis-check-aof --fix when Redis refuses
                      to start (no, the default here; see below)
  --rate R            tasks enqueued per second (default N/30, between 50
                      and 2000: enqueueing overlaps the first Redis kill)
  --max-attempts A    attempts per task (default 25)
  --timeout S         give up if not drained after S seconds
                      (default 1800 + N/10)
  --seed S            seed of the generated inputs (default: random)
  --keep              keep the run directory even on success
  -h, --help          this help
EOF
}

tasks=100000 workers=3 concurrency=8 kills="" restarts="" queues=4 lease=3s
fsync=always load_truncated=no rate="" max_attempts=25 timeout="" seed="" keep=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tasks) tasks=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --concurrency) concurrency=$2; shift 2 ;;
        --kills) kills=$2; shift 2 ;;
        --redis-restarts) restarts=$2; shift 2 ;;
        --queues) queues=$2; shift 2 ;;
        --lease) lease=$2; shift 2 ;;
        --fsync) fsync=$2; shift 2 ;;
        --aof-load-truncated) load_truncated=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --max-attempts) max_attempts=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --keep) keep=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "crash-at-scale: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
for pair in "tasks=$tasks" "workers=$workers" "concurrency=$concurrency" "kills=$kills" \
    "redis-restarts=$restarts" "queues=$queues" "rate=$rate" "max-attempts=$max_attempts" \
    "timeout=$timeout" "seed=$seed"; do
    # Empty: not given, defaulted below.
    if [[ -n ${pair#*=} ]] && ! [[ ${pair#*=} =~ ^[0-9]{1,15}$ ]]; then
        echo "crash-at-scale: --${pair%%=*} must be a whole number, not \`${pair#*=}\`" >&2
        exit 2
    fi
done
[[ -n $restarts ]] || restarts=$(( tasks / 20000 > 3 ? tasks / 20000 : 3 ))
[[ -n $kills ]] || kills=$(( tasks / 1000 > 5 ? tasks / 1000 : 5 ))
[[ -n $rate ]] || rate=$(( tasks / 30 < 50 ? 50 : tasks / 30 > 2000 ? 2000 : tasks / 30 ))
[[ -n $timeout ]] || timeout=$(( 1800 + tasks / 10 ))
[[ -n $seed ]] || seed=$(( (RANDOM << 30) | (RANDOM << 15) | RANDOM ))
if (( tasks < 1 || workers < 1 || concurrency < 1 || queues < 1 || max_attempts < 1 )); then
    echo "crash-at-scale: --tasks, --workers, --concurrency, --queues and --max-attempts must be at least 1" >&2
    exit 2
fi
if (( (tasks + queues - 1) / queues > 100000 )); then
    echo "crash-at-scale: more than 100000 tasks per queue would pass the broker's retention bound; use more --queues" >&2
    exit 2
fi
case "$fsync" in always | everysec) ;; *)
    echo "crash-at-scale: --fsync must be always or everysec" >&2; exit 2 ;;
esac
case "$load_truncated" in yes | no) ;; *)
    echo "crash-at-scale: --aof-load-truncated must be yes or no" >&2; exit 2 ;;
esac
if ! [[ $lease =~ ^[0-9]+(ms|s)$ ]]; then
    echo "crash-at-scale: --lease must look like 3s or 2500ms" >&2
    exit 2
fi
for tool in redis-server redis-cli redis-check-aof cargo timeout pgrep; do
    command -v "$tool" >/dev/null 2>&1 || { echo "crash-at-scale: $tool is needed" >&2; exit 1; }
done

say() { echo "[crash-at-scale $(date +%T)] $*"; }

# ---- build ----
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
say "building corral and crash_check (release)"
cargo build --release --quiet --bin corral --example crash_check
BIN=$TARGET/release/corral
CHECK=$TARGET/release/examples/crash_check
for job in normalize count_words top_k; do
    if [[ ! -f jobs/dist/$job.wasm ]]; then
        say "building the job components"
        jobs/build.sh
        break
    fi
done

# ---- processes and clean-up ----
RUN=$(mktemp -d "${TMPDIR:-/tmp}/corral-crash.XXXXXX")
mkdir -p "$RUN/redis" "$RUN/logs" "$RUN/cache"
PREFIX=crash
redis_pid="" producer_pid="" port="" aof_repairs=0
declare -a wpid=()

stop_pid() { # pid signal seconds: signal, wait up to seconds, then SIGKILL
    local pid=$1 sig=$2 secs=$3 i
    [[ -n $pid ]] || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for (( i = 0; i < secs * 10; i++ )); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT
    for pid in "${wpid[@]}" "$producer_pid"; do
        [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null || true
    done
    stop_pid "$redis_pid" TERM 30
    if [[ $status -eq 0 && $keep == false ]]; then
        rm -rf "$RUN"
    else
        echo "crash-at-scale: run directory kept: $RUN" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pick_port() {
    local p i
    for (( i = 0; i < 200; i++ )); do
        p=$(( 20000 + RANDOM % 30000 ))
        # Nothing answers a connection there (and it is not the machine's Redis).
        if [[ $p != 6379 ]] && ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

# Starts redis-server on $port and its data directory (what the AOF holds
# comes back); false if it did not answer PING within 120 s.
start_redis_once() {
    redis-server --port "$port" --bind 127.0.0.1 --dir "$RUN/redis" \
        --logfile "$RUN/redis/redis.log" --appendonly yes --appendfsync "$fsync" \
        --aof-load-truncated "$load_truncated" --save "" --daemonize no \
        </dev/null >/dev/null 2>&1 &
    redis_pid=$!
    local i
    for (( i = 0; i < 1200; i++ )); do
        kill -0 "$redis_pid" 2>/dev/null || return 1
        [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.1
    done
    return 1
}

# start_redis_once, and if Redis refused its AOF because a kill cut the last
# write short (only with --aof-load-truncated no), what an operator does:
# `redis-check-aof --fix`, which cuts the file before the torn command or
# the torn MULTI/EXEC block of a script, then start again.
start_redis() {
    local from
    from=1
    if [[ -f $RUN/redis/redis.log ]]; then
        from=$(( $(wc -l <"$RUN/redis/redis.log") + 1 ))
    fi
    start_redis_once && return 0
    kill_redis
    [[ $load_truncated == no ]] || return 1
    tail -n "+$from" "$RUN/redis/redis.log" | grep -q 'Unexpected end of file reading the append only file' ||
        return 1
    local manifest
    manifest=$(ls "$RUN"/redis/appendonlydir/*.manifest 2>/dev/null | head -n 1)
    [[ -n $manifest ]] || return 1
    echo y | redis-check-aof --fix "$manifest" >"$RUN/redis/check-aof-$aof_repairs.out" 2>&1 || true
    aof_repairs=$(( aof_repairs + 1 ))
    say "redis-server refused its AOF (a write torn by the kill); redis-check-aof --fix:" \
        "$(grep -m1 'This will shrink' "$RUN/redis/check-aof-$(( aof_repairs - 1 )).out" || echo 'nothing to cut')"
    start_redis_once
}

kill_redis() {
    # With it, its AOF-rewrite child if one is running (as a crash of the
    # machine or container would take both).
    local children child
    children=$(pgrep -P "$redis_pid" 2>/dev/null || true)
    kill -KILL "$redis_pid" 2>/dev/null || true
    for child in $children; do
        kill -KILL "$child" 2>/dev/null || true
    done
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=""
}

started_workers=0
queue_args=()
for (( q = 0; q < queues; q++ )); do queue_args+=(--queue "crash-$q"); done
start_worker() { # slot
    started_workers=$(( started_workers + 1 ))
    RUST_LOG=warn,corral_worker::executor=debug NO_COLOR=1 CORRAL_CACHE_DIR="$RUN/cache" \
        "$BIN" worker --redis "$URL" --prefix "$PREFIX" "${queue_args[@]}" \
        --concurrency "$concurrency" --lease "$lease" --shutdown-grace 2s \
        </dev/null >/dev/null 2>"$RUN/logs/worker-$started_workers.log" &
    wpid[$1]=$!
}

common=(--prefix "$PREFIX" --queues "$queues")

# ---- start ----
for (( attempt = 0; attempt < 5; attempt++ )); do
    port=$(pick_port) || { echo "crash-at-scale: no free port" >&2; exit 1; }
    start_redis && break
    kill_redis
    port=""
done
[[ -n $port ]] || { echo "crash-at-scale: redis-server did not start; see $RUN/redis/redis.log" >&2; exit 1; }
URL=redis://127.0.0.1:$port
say "run dir $RUN; redis-server on port $port, appendfsync $fsync"
say "tasks $tasks, workers $workers x concurrency $concurrency, lease $lease, queues $queues," \
    "worker kills $kills, redis restarts $restarts (+1 before the check), seed $seed"
timeout 300 "$CHECK" setup --redis "$URL" "${common[@]}" --jobs-dir "$ROOT/jobs/dist" \
    --cache-dir "$RUN/cache"

t_start=$(date +%s.%N)
for (( w = 0; w < workers; w++ )); do start_worker "$w"; done
IDS=$RUN/ids.txt
: >"$IDS"
# Batches of a tenth of a second's worth: many enqueue calls, so Redis kills
# hit some of them.
batch=$(( rate / 10 < 1 ? 1 : rate / 10 > 500 ? 500 : rate / 10 ))
"$CHECK" enqueue --redis "$URL" "${common[@]}" --tasks "$tasks" --rate "$rate" --batch "$batch" \
    --max-attempts "$max_attempts" --seed "$seed" --ids "$IDS" \
    </dev/null >"$RUN/producer.out" 2>"$RUN/producer.log" &
producer_pid=$!

# ---- chaos until drained ----
worker_kills=0 redis_kills=0 kills_in_rewrite=0 self_exits=0 producer_status=""
p=0 s=0 a=0 c=0 d=0 idle_polls=0
deadline=$(( $(date +%s) + timeout ))
last_report=0
while true; do
    now=$(date +%s)
    if (( now > deadline )); then
        say "FAIL: not drained after ${timeout}s: pending $p scheduled $s active $a completed $c dead $d"
        exit 1
    fi
    if [[ -z $producer_status ]] && ! kill -0 "$producer_pid" 2>/dev/null; then
        producer_status=0
        wait "$producer_pid" || producer_status=$?
        say "producer exited ($producer_status): $(cat "$RUN/producer.out")"
        if [[ $producer_status != 0 ]]; then
            say "producer log: $(tail -n 3 "$RUN/producer.log")"
        fi
    fi
    confirmed=$(wc -l <"$IDS")
    if line=$(timeout 15 "$CHECK" progress --redis "$URL" "${common[@]}" 2>/dev/null); then
        read -r p s a c d <<<"$line"
        fresh=true
    else
        fresh=false
    fi

    # Workers that exited on their own (none should: a worker started while
    # Redis is away waits for it): restart them, counted.
    for (( w = 0; w < workers; w++ )); do
        if ! kill -0 "${wpid[$w]}" 2>/dev/null; then
            st=0
            wait "${wpid[$w]}" 2>/dev/null || st=$?
            self_exits=$(( self_exits + 1 ))
            say "worker in slot $w exited by itself (status $st); starting another"
            start_worker "$w"
        fi
    done

    if [[ $fresh == true ]]; then
        # Drained: the producer is done and nothing is left to run, three
        # polls in a row. (Not "completed + dead = confirmed": a lost task
        # would then keep the loop waiting; the check reports it instead.)
        if [[ -n $producer_status ]] && (( p + s + a == 0 )); then
            idle_polls=$(( idle_polls + 1 ))
            (( idle_polls < 3 )) || break
        else
            idle_polls=0
        fi
        # Worker kill j happens once j*N/(M+1) tasks have completed.
        if (( worker_kills < kills && c >= (worker_kills + 1) * tasks / (kills + 1) )); then
            victim=$(( RANDOM % workers ))
            kill -KILL "${wpid[$victim]}" 2>/dev/null || true
            wait "${wpid[$victim]}" 2>/dev/null || true
            worker_kills=$(( worker_kills + 1 ))
            start_worker "$victim"
        fi
        # Redis kill 1 once the producer is half way, kill r (> 1) once
        # (r-1)*N/R tasks have completed.
        if (( redis_kills < restarts )); then
            if (( redis_kills == 0 ? confirmed >= tasks / 2 : c >= redis_kills * tasks / restarts )); then
                # Every other kill lands during an AOF rewrite (new base
                # file, new incremental file, manifest switch).
                during=""
                if (( redis_kills % 2 == 1 )); then
                    redis-cli -p "$port" bgrewriteaof >/dev/null 2>&1 || true
                    sleep "0.$(printf %03d $(( RANDOM % 300 )))"
                    if redis-cli -p "$port" info persistence 2>/dev/null | grep -q '^aof_rewrite_in_progress:1'; then
                        during=" during an AOF rewrite"
                        kills_in_rewrite=$(( kills_in_rewrite + 1 ))
                    fi
                fi
                kill_redis
                redis_kills=$(( redis_kills + 1 ))
                down=$(( RANDOM % 3000 ))
                say "redis-server SIGKILLed$during ($redis_kills/$restarts; confirmed $confirmed, completed $c); down for ${down}ms"
                sleep "$(( down / 1000 )).$(printf %03d $(( down % 1000 )))"
                start_redis || { say "FAIL: redis-server did not come back; see $RUN/redis/redis.log"; exit 1; }
            fi
        fi
    fi
    if (( now - last_report >= 15 )); then
        last_report=$now
        say "confirmed $confirmed; pending $p scheduled $s active $a completed $c dead $d;" \
            "worker kills $worker_kills, redis restarts $redis_kills, self exits $self_exits"
    fi
    sleep 0.5
done
t_drained=$(date +%s.%N)
say "drained: completed $c dead $d"

# ---- stop everything, restart Redis from its AOF, check ----
for (( w = 0; w < workers; w++ )); do stop_pid "${wpid[$w]}" TERM 30; done
wpid=()
aof_bytes=$(du -sb "$RUN/redis" | cut -f1)
kill_redis
say "workers stopped; redis-server SIGKILLed once more and restarted from its AOF ($aof_bytes bytes on disk)"
start_redis || { say "FAIL: redis-server did not come back; see $RUN/redis/redis.log"; exit 1; }

check_status=0
timeout 1800 "$CHECK" check --redis "$URL" "${common[@]}" --seed "$seed" --ids "$IDS" \
    --expect "$tasks" --logs "$RUN/logs" || check_status=$?

wall=$(awk -v a="$t_start" -v b="$t_drained" 'BEGIN { printf "%.1f", b - a }')
rate_done=$(awk -v n="$c" -v a="$t_start" -v b="$t_drained" 'BEGIN { printf "%.1f", n / (b - a) }')
echo "crash-at-scale figures:"
echo "  tasks                 $tasks (3 handlers each), over $queues queues"
echo "  workers               $workers x concurrency $concurrency, lease $lease; $started_workers processes started"
echo "  worker SIGKILLs       $worker_kills"
echo "  worker self-exits     $self_exits"
echo "  redis SIGKILLs        $redis_kills during the run ($kills_in_rewrite during an AOF rewrite) + 1 before the check"
echo "  redis AOF             appendfsync $fsync, aof-load-truncated $load_truncated; $aof_repairs torn tails cut by redis-check-aof --fix"
echo "  producer              $(cat "$RUN/producer.out" 2>/dev/null)"
echo "  wall time             ${wall}s (first worker start to drained)"
echo "  throughput            $rate_done tasks/s"
echo "  seed                  $seed"
if [[ $producer_status != 0 ]]; then
    echo "FAIL: the producer exited with status $producer_status" >&2
    exit 1
fi
if (( worker_kills < kills || redis_kills < restarts )); then
    # Kills are paced by progress, at most one per poll: a fast run can
    # drain first. The figures above say how many happened.
    echo "note: the run drained before every planned kill ($worker_kills/$kills workers, $redis_kills/$restarts redis)" >&2
fi
exit "$check_status"

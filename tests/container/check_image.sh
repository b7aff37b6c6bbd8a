#!/usr/bin/env bash
# check_image.sh: build the image and run it for real with podman (or docker), the way a user and
# Kubernetes do: an empty checkpoint volume, training into it, stops (SIGTERM to PID 1), CPU quotas and
# a read-only root filesystem. Not collected by pytest (it needs a container engine, minutes and root).
#
# Usage, from the project's root:
#   tests/container/check_image.sh                    # build ckptserve:dev, then every check
#   IMAGE=ckptserve:0.1.0 NO_BUILD=1 tests/container/check_image.sh
# Knobs: ENGINE (podman), IMAGE (ckptserve:dev), NO_BUILD (skip the build), BUILD_ARGS (extra build
# arguments, e.g. "--network host --pull=never --build-arg TORCH_INDEX_URL=..."), RUN_ARGS (extra
# options for every container, e.g. "--ulimit nofile=8192:8192"), DEADLINE (s, 300).
# Each line it prints starts with PASS, FAIL or INFO; the exit status is the number of FAILs (0: all pass).
# Containers run with --network none: every request is made from inside the container, so no port of the
# host is taken and several runs do not collide.

set -uo pipefail

ENGINE=${ENGINE:-podman}
IMAGE=${IMAGE:-ckptserve:dev}
DEADLINE=${DEADLINE:-300}
UID_GID=10001:10001 # the image's USER (Dockerfile); k8s/ repeats it
PREFIX=ckc-$$
WORK=$(mktemp -d -t ckptserve-check.XXXXXX)
FAILS=0
STARTED=()

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; FAILS=$((FAILS + 1)); }
info() { printf 'INFO %s\n' "$*"; }
check() { # check "what" command...: PASS when the command exits 0
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

cleanup() {
    for name in "${STARTED[@]}"; do "$ENGINE" rm -f -t 0 "$name" >/dev/null 2>&1; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# A host directory the image's user owns (a volume, or a writable path under --read-only).
owned_dir() {
    local dir=$WORK/$1
    mkdir -p "$dir" && chown "$UID_GID" "$dir" && chmod 0750 "$dir"
    echo "$dir"
}

# start NAME [engine run options...] -- [server arguments...]
start() {
    local name=$PREFIX-$1; shift
    local opts=()
    while (($#)) && [[ $1 != -- ]]; do opts+=("$1"); shift; done
    shift || true
    STARTED+=("$name")
    # shellcheck disable=SC2086 # RUN_ARGS is a list of words on purpose
    "$ENGINE" run -d --name "$name" --network none ${RUN_ARGS:-} "${opts[@]}" "$IMAGE" "$@" >/dev/null 2>"$WORK/run.err" ||
        fail "start $name: the engine refused: $(grep -v systemd "$WORK/run.err" | tail -n 1)"
}

# Poll until the command succeeds or $DEADLINE seconds pass (no fixed sleeps as synchronization).
wait_for() {
    local end=$(($(date +%s) + DEADLINE))
    until "$@" >/dev/null 2>&1; do
        (($(date +%s) < end)) || return 1
        sleep 1
    done
}

logs_have() { "$ENGINE" logs "$PREFIX-$1" 2>&1 | grep -q -- "$2"; }
running() { [[ $("$ENGINE" inspect -f '{{.State.Running}}' "$PREFIX-$1" 2>/dev/null) == true ]]; }
in_ctr() { local name=$PREFIX-$1; shift; "$ENGINE" exec -i "$name" "$@"; }
ready() { in_ctr "$1" ckptserve status --ready --quiet; }

# HTTP from inside the container, with the key TorchServe drew (when token auth is on).
# http NAME PORT METHOD PATH [BODY] [KEY=inference|management] -> prints "STATUS BODY"
http() {
    in_ctr "$1" python - "$2" "$3" "$4" "${5:-}" "${6:-inference}" <<'PY'
import json, os, sys, urllib.error, urllib.request as u
port, method, path, body, which = sys.argv[1:6]
# No Content-Type without a body: the handler answers a management GET that has one as inference
headers = {"Content-Type": "application/json"} if body else {}
key_file = "/tmp/ckptserve-%d/key_file.json" % os.getuid()
if os.path.exists(key_file):
    headers["Authorization"] = "Bearer " + json.load(open(key_file))[which]["key"]
request = u.Request(f"http://127.0.0.1:{port}{path}", data=body.encode() or None, headers=headers, method=method)
try:
    with u.urlopen(request, timeout=30) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
PY
}

DIGIT='{"instances": [[[[0,0,5,13,9,1,0,0],[0,0,13,15,10,15,5,0],[0,3,15,2,0,11,8,0],[0,4,12,0,0,8,8,0],[0,5,8,0,0,9,8,0],[0,4,11,0,1,12,7,0],[0,2,14,5,10,12,0,0],[0,0,6,13,10,0,0,0]]]]}'

# stop NAME: SIGTERM to PID 1 with 10 s before SIGKILL; PASS when it exits 0 within the 10 s.
stop_check() {
    local name=$PREFIX-$1 when=$2 t0 took code
    t0=$(now)
    "$ENGINE" stop -t 10 "$name" >/dev/null 2>&1
    took=$(secs "$t0" "$(now)")
    code=$("$ENGINE" inspect -f '{{.State.ExitCode}}' "$name")
    if [[ $code == 0 ]] && awk -v t="$took" 'BEGIN { exit !(t < 10) }' && ! logs_have "$1" "outlived SIGTERM"; then
        pass "stop $when: exit code $code after $took s"
    else
        fail "stop $when: exit code $code after $took s (wanted 0 within 10 s)"
        "$ENGINE" logs --tail 15 "$name" 2>&1 | sed 's/^/    /'
    fi
}

# --- 1. build --------------------------------------------------------------------------------------
if [[ -z ${NO_BUILD:-} ]]; then
    t0=$(now)
    # shellcheck disable=SC2086 # BUILD_ARGS is a list of words on purpose
    # podman's default OCI format drops HEALTHCHECK: build in docker format, as `docker build` does.
    format=(); [[ $ENGINE == podman ]] && format=(--format docker)
    if "$ENGINE" build "${format[@]}" ${BUILD_ARGS:-} -t "$IMAGE" . >"$WORK/build.log" 2>&1; then
        pass "build $IMAGE in $(secs "$t0" "$(now)") s"
    else
        fail "build $IMAGE"; tail -n 30 "$WORK/build.log"; exit 1
    fi
fi
info "image $IMAGE: $("$ENGINE" image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
# Without a HEALTHCHECK in the image every "HEALTHCHECK fails while waiting" check would pass vacuously.
health=$("$ENGINE" image inspect -f '{{if .Config.Healthcheck}}{{.Config.Healthcheck.Test}}{{end}}' "$IMAGE" 2>/dev/null)
[[ $health == *status* ]] && pass "the image has a HEALTHCHECK: $health" ||
    fail "the image has no HEALTHCHECK running ckptserve status (got: ${health:-none}); podman needs --format docker"

# --- 2. empty volume: wait, train, serve -----------------------------------------------------------
CKPT=$(owned_dir checkpoints)
start empty -v "$CKPT:/checkpoints"
check "empty volume: the log says it waits for the first checkpoint" wait_for logs_have empty "waiting for the first checkpoint in /checkpoints"
if ready empty; then fail "empty volume: status --ready exits 0 while waiting"; else
    pass "empty volume: status --ready exits $? while waiting"; fi
if "$ENGINE" healthcheck run "$PREFIX-empty" >/dev/null 2>&1; then fail "empty volume: HEALTHCHECK passes while waiting"; else
    pass "empty volume: HEALTHCHECK fails while waiting (unhealthy until a checkpoint is served)"; fi
reply=$(http empty 8080 POST /predictions/digits "$DIGIT")
[[ $reply == 503* && $reply == */checkpoints* ]] && pass "empty volume: a request gets 503 naming /checkpoints" ||
    fail "empty volume: a request got: ${reply:0:200}"
t0=$(now)
in_ctr empty python model_store/digits/train.py /checkpoints --epochs 1 >"$WORK/train.log" 2>&1 &&
    pass "training (podman exec, uid 10001) wrote $(ls "$CKPT" | tr '\n' ' ')" || { fail "training"; tail -n 20 "$WORK/train.log"; }
check "empty volume: ready after training" wait_for ready empty
info "ready $(secs "$t0" "$(now)") s after training started"
# the key as k8s/README.md tells a user to read it
key=$(in_ctr empty python -c "import json; print(json.load(open('/tmp/ckptserve-10001/key_file.json'))['inference']['key'])")
[[ -n $key ]] && pass "k8s/README.md's command prints the inference key" || fail "k8s/README.md's key command printed nothing"
reply=$(http empty 8080 POST /predictions/digits "$DIGIT")
[[ $reply == 200* ]] && pass "prediction with the inference key: ${reply:0:120}" || fail "prediction: ${reply:0:200}"
reply=$(in_ctr empty python - <<<'import urllib.error, urllib.request as u
try:
    u.urlopen("http://127.0.0.1:8080/ping")
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())')
# TorchServe 0.12 answers a missing key with 400 InvalidKeyException (not 401)
[[ $reply == 400*InvalidKeyException* ]] && pass "without the key: 400 InvalidKeyException (token authorization is on at 0.0.0.0)" ||
    fail "without the key: ${reply:0:200}"
check "HEALTHCHECK passes" "$ENGINE" healthcheck run "$PREFIX-empty"
stop_check empty "in steady state"

# --- 3. stops at other moments --------------------------------------------------------------------
start early -v "$CKPT:/checkpoints:ro"
sleep 3 # the moment under test: a stop 3 s into start-up (the JVM is starting)
logs_have early "inference (HTTP)" && info "early: the server had started within 3 s (not a start-up stop)"
stop_check early "3 s after start"
start waiting -v "$(owned_dir empty2):/checkpoints:ro"
wait_for logs_have waiting "waiting for the first checkpoint" || fail "waiting: never logged it"
stop_check waiting "while waiting for the first checkpoint"

# --- 4. CPU quota ---------------------------------------------------------------------------------
# describe (management API) of the serving worker: threads, pid; then the worker's environment.
quota_check() {
    local name=$1 what=$2 cpus=$3 intra=$4 workers reply threads pid env plans want
    wait_for ready "$name" || { fail "$what: not ready"; return; }
    reply=$(http "$name" 8081 GET "/models/digits?customized=true" "" management)
    # threads and pid of the worker that answered describe; the worker count TorchServe runs
    read -r threads pid workers < <(sed 's/^[0-9]* //' <<<"$reply" | python3 -c '
import json, sys
entry = json.load(sys.stdin)[0]
custom = entry["customizedMetadata"]
custom = json.loads(custom) if isinstance(custom, str) else custom
print(custom["threads"], custom["pid"], len(entry["workers"]))' 2>/dev/null)
    # each worker logs its plan: the CPUs it counted (affinity and cgroup quota) and the workers it shares them with
    plans=$(in_ctr "$name" cat /var/log/ckptserve/model_log.log | grep -o "threads: {[^}]*}" | sort | uniq -c)
    info "$what: worker plans: $plans"
    want="'workers': $workers, 'workers_from': 'model-config minWorkers', 'cpus': $cpus}"
    if [[ $threads == "$intra" && -n $plans ]] && ! grep -vqF "$want" <<<"$plans"; then
        pass "$what: $workers workers, each counts $cpus CPU(s) and runs $threads intra-op thread(s)"
    else
        fail "$what: $workers workers, describe threads '$threads'; wanted $intra thread(s) and plans ending $want"
    fi
    env=$(in_ctr "$name" sh -c "tr '\0' '\n' </proc/$pid/environ | grep -E '^(OMP_WAIT_POLICY|CKPTSERVE_WORKERS)='" | tr '\n' ' ')
    [[ $env == *OMP_WAIT_POLICY=PASSIVE* ]] && pass "$what: worker $pid environ has $env" ||
        fail "$what: worker $pid environ lacks OMP_WAIT_POLICY=PASSIVE ($env)"
    stop_check "$name" "$what, steady state"
}
start cpus1 --cpus 1 -v "$CKPT:/checkpoints:ro"
quota_check cpus1 "--cpus 1" 1 1
start cpuset0 --cpuset-cpus 0 -v "$CKPT:/checkpoints:ro"
quota_check cpuset0 "--cpuset-cpus 0" 1 1

# --- 5. read-only root filesystem, as k8s/ runs the training Job and the servers ------------------
# The Job (k8s/examples/train-job.yaml): its command, working directory and environment, /tmp writable.
JOB_CKPT=$(owned_dir job-checkpoints)
# shellcheck disable=SC2086 # RUN_ARGS is a list of words on purpose
if "$ENGINE" run --rm --network none ${RUN_ARGS:-} --read-only -v "$(owned_dir job-tmp):/tmp" \
    -v "$JOB_CKPT:/checkpoints" --workdir /app -e HOME=/tmp -e TMPDIR=/tmp -e OMP_NUM_THREADS=2 \
    --cap-drop ALL --security-opt no-new-privileges --entrypoint python "$IMAGE" \
    model_store/digits/train.py /checkpoints --epochs 1 >"$WORK/job.log" 2>&1; then
    pass "training Job (read-only root) wrote $(ls "$JOB_CKPT" | tr '\n' ' ')"
else
    fail "training Job (read-only root)"; grep -v systemd "$WORK/job.log" | tail -n 10
fi
start readonly --read-only -v "$(owned_dir tmp):/tmp" -v "$(owned_dir logs):/var/log/ckptserve" \
    -v "$JOB_CKPT:/checkpoints:ro" --workdir /tmp --cap-drop ALL --security-opt no-new-privileges \
    -e OMP_NUM_THREADS=1 -- --no-token-auth
check "read-only root: ready" wait_for ready readonly
reply=$(http readonly 8080 POST /predictions/digits "$DIGIT")
[[ $reply == 200* ]] && pass "read-only root: prediction without a key (--no-token-auth)" || fail "read-only root: ${reply:0:200}"
reply=$(http readonly 8080 GET /ping)
[[ $reply == 200* ]] && pass "read-only root: /ping 200 without a key (the Deployment's startupProbe)" || fail "read-only root: /ping ${reply:0:200}"
check "read-only root: HEALTHCHECK passes (no key file with --no-token-auth)" "$ENGINE" healthcheck run "$PREFIX-readonly"
stop_check readonly "read-only root, steady state"

info "$FAILS failed"
exit "$FAILS"

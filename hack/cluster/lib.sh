# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source it
# Shared by hack/cluster/{up,down,restart,plugin}; sourced, not run.
# State layout under DIR (the argument of every command):
#   env            ports, paths and versions of this cluster (shell assignments)
#   pki/           CA, serving and client certificates, service-account key pair
#   *.kubeconfig   admin (yours), controller-manager, scheduler, kubelet
#   etcd/ containerd/ kubelet/ cdi/ cni/   component state
#   run/<name>.sh  how each component is started; run/<name>.pid its pid
#   logs/<name>.log
#   sysctl.orig    kernel settings as they were before the first kubelet start

log() { echo "cluster: $*" >&2; }
die() { echo "cluster: error: $*" >&2; exit 1; }

# Components in start order; down stops them in reverse.
COMPONENTS="etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet"

# Kernel settings the kubelet (setupKernelTunables) and the CNI bridge may change.
SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward"

state_dir() {
    [ -n "${1:-}" ] || die "usage: $(basename "$0") DIR"
    mkdir -p "$1"
    (cd "$1" && pwd)
}

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

component_pid() {
    local f=$DIR/run/$1.pid
    [ -f "$f" ] && cat "$f"
}

# start NAME: run DIR/run/NAME.sh in its own session, detached from the caller.
start_component() {
    local name=$1
    local pid
    pid=$(component_pid "$name" || true)
    if pid_alive "$pid"; then
        log "$name already running (pid $pid)"
        return
    fi
    mkdir -p "$DIR/logs"
    echo "--- start $(date -u +%FT%TZ)" >>"$DIR/logs/$name.log"
    setsid bash "$DIR/run/$name.sh" </dev/null >>"$DIR/logs/$name.log" 2>&1 &
    echo $! >"$DIR/run/$name.pid"
    log "$name started (pid $!, log $DIR/logs/$name.log)"
}

# stop NAME [SIGNAL]: signal the component's session, wait up to 15 s, then SIGKILL.
stop_component() {
    local name=$1 sig=${2:-TERM}
    local pid
    pid=$(component_pid "$name" || true)
    if ! pid_alive "$pid"; then
        rm -f "$DIR/run/$name.pid"
        return
    fi
    kill -"$sig" -- "-$pid" 2>/dev/null || kill -"$sig" "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 150); do
        pid_alive "$pid" || break
        sleep 0.1
    done
    if pid_alive "$pid"; then
        log "$name did not stop on SIG$sig; killing"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do pid_alive "$pid" || break; sleep 0.1; done
    fi
    rm -f "$DIR/run/$name.pid"
    log "$name stopped"
}

# wait_for SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local deadline=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.2
    done
}

kubectl_get() {
    # GET an API path with the admin credentials; prints the body.
    curl -sf --max-time 5 --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/admin.crt" --key "$DIR/pki/admin.key" \
        "https://127.0.0.1:$APISERVER_PORT$1"
}

#!/bin/sh
# `make run`: a demo host. Starts an emulated Xen host (xenopsd.emu: the
# hypervisor, xenstored and dom0's device backends in one process) and
# xenopsd with the production xc backend on it, on $RUNDIR/sockets; creates
# and starts the VMs of deploy/demo/*.cfg; prints how to talk to it with
# xenops-cli; and stays in the foreground until Ctrl-C.
# BACKEND=simulator runs the simulator backend instead, with no emulated host.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
RUNDIR=${RUNDIR:-$(pwd)/run}
BACKEND=${BACKEND:-xc}
socket=$RUNDIR/sockets/xenopsd
cli() { XENOPSD_SOCKET=$socket "$PYTHON" -m xenopsd.cli "$@"; }

# The emulated host's domains vanish with it, so each demo starts afresh.
rm -rf "$RUNDIR/db" "$RUNDIR/emu"
mkdir -p "$RUNDIR/sockets" "$RUNDIR/db" "$RUNDIR/hooks" "$RUNDIR/emu"
pids=""
stop() {
    for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $pids; do wait "$pid" 2>/dev/null || true; done
}
trap 'stop; exit 0' INT TERM

wait_until() {  # wait_until PID DESCRIPTION COMMAND...
    pid=$1 what=$2
    shift 2
    tries=0
    until "$@" >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ $tries -gt 150 ] || ! kill -0 "$pid" 2>/dev/null; then
            echo "$what did not come up; see the logs in $RUNDIR" >&2
            stop
            exit 1
        fi
        sleep 0.2
    done
}

hypervisor=""
if [ "$BACKEND" = xc ]; then
    "$PYTHON" -m xenopsd.emu --rundir "$RUNDIR/emu" >"$RUNDIR/emu.log" 2>&1 &
    pids="$!"
    wait_until "$!" "the emulated host" test -S "$RUNDIR/emu/control.sock"
    hypervisor="--hypervisor emu:$RUNDIR/emu"
fi
# shellcheck disable=SC2086 # $hypervisor is two words or none
"$PYTHON" -m xenopsd --backend "$BACKEND" $hypervisor --sockets-path "$RUNDIR/sockets" \
    --database-path "$RUNDIR/db" --use-switch false --hooks-dir "$RUNDIR/hooks" \
    >"$RUNDIR/xenopsd.log" 2>&1 &
pids="$! $pids"
wait_until "$!" "xenopsd" cli host

for cfg in "$here"/demo/*.cfg; do
    cli create "$cfg"
done
cli list
echo
echo "xenopsd ($BACKEND backend) is running on $socket; Ctrl-C stops it. Talk to it with:"
echo "    export XENOPSD_SOCKET=$socket; xenops-cli list"
echo "Its log: $RUNDIR/xenopsd.log"
for pid in $pids; do wait "$pid"; done

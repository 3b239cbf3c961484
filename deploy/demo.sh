#!/bin/sh
# `make run`: a demo host. Starts xenopsd with the simulator backend on
# $RUNDIR/sockets, registers and starts the VMs of deploy/demo/*.cfg (those
# not there yet: the metadata store persists across runs), prints how to talk
# to it with xenops-cli, and stays in the foreground until Ctrl-C.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
RUNDIR=${RUNDIR:-$(pwd)/run}
mkdir -p "$RUNDIR/sockets" "$RUNDIR/db" "$RUNDIR/hooks"
socket=$RUNDIR/sockets/xenopsd
cli() { XENOPSD_SOCKET=$socket "$PYTHON" -m xenopsd.cli "$@"; }

"$PYTHON" -m xenopsd --backend simulator --sockets-path "$RUNDIR/sockets" \
    --database-path "$RUNDIR/db" --use-switch false --hooks-dir "$RUNDIR/hooks" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon; exit 0' INT TERM

tries=0
until cli host >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ $tries -gt 150 ] || ! kill -0 $daemon 2>/dev/null; then
        echo "xenopsd did not come up" >&2
        kill -TERM $daemon 2>/dev/null || true
        exit 1
    fi
    sleep 0.2
done

for cfg in "$here"/demo/*.cfg; do
    name=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$cfg")
    if ! cli show "$name" >/dev/null 2>&1; then
        cli create "$cfg"
    elif cli --json show "$name" | grep -q '"power_state": "Halted"'; then
        cli start "$name"
    fi
done
cli list
echo
echo "xenopsd (simulator) is running on $socket; Ctrl-C stops it. Talk to it with:"
echo "    export XENOPSD_SOCKET=$socket; xenops-cli list"
wait $daemon

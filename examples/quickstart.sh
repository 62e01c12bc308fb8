#!/usr/bin/env bash
# Set edgekernel up from this checkout and use it on an emulated board (no hardware needed):
# the shell first, then the example notebook run headlessly on the "MicroPython (emulated board)" kernel.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing edgekernel from this checkout, and nbconvert to run the notebook (pip shows its progress)"
python3 -m pip install -e . nbconvert
edgekernel install --sys-prefix

echo "== an emulated board (real MicroPython, unix port on a pseudo-terminal)"
info=$(mktemp)
edgekernel board --emulator unix --json > "$info" &
board_pid=$!
trap 'kill "$board_pid" 2>/dev/null; wait "$board_pid" 2>/dev/null; rm -f "$info"' EXIT
for _ in $(seq 100); do [ -s "$info" ] && break; sleep 0.1; done
port=$(python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["port"])' "$info")
echo "board on $port"
set -x
edgekernel exec --port "$port" 'import sys; print(sys.implementation.name, sys.version)'
edgekernel exec --port "$port" 'sum(range(10))'
{ set +x; } 2>/dev/null

echo "== examples/getting_started.ipynb on the MicroPython (emulated board) kernel"
jupyter nbconvert --to markdown --execute --stdout examples/getting_started.ipynb

echo "== it works: the edgekernel CLI and the MicroPython (emulated board) kernel ran real MicroPython." \
     "Next: plug a board in and run 'edgekernel devices', or open examples/getting_started.ipynb in Jupyter (pip install jupyterlab; jupyter lab)."

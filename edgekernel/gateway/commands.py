"""``edgekernel gateway ...`` subcommands (thin: the work is in manage.py)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .ssh import GatewayError


def cmd_gateway(args: argparse.Namespace) -> int:
    from . import manage
    try:
        if args.gateway_command == "add":
            probe, written = manage.add(args.name, args.ssh, ssh_config=args.ssh_config, python=args.python,
                                        prefix=args.prefix)
            print(f"{args.name}: {probe.get('hostname')}, Python {probe.get('python_version')}, "
                  f"edgekernel {probe.get('edgekernel')}, {len(probe.get('boards', []))} board(s)")
            for name, path in written:
                print(f"installed kernelspec {name} in {path}")
        elif args.gateway_command == "list":
            gateways = manage.listing(args.prefix)
            if args.json:
                print(json.dumps(gateways, indent=2))
            elif not gateways:
                print("no gateways: add one with 'edgekernel gateway add NAME --ssh USER@HOST'")
            else:
                for g in gateways:
                    boards = ", ".join(b["device"] for b in g["boards"]) or "no boards"
                    print(f"{g['name']:<12} {g['ssh']:<24} {boards}  kernels: {', '.join(g['kernels']) or '-'}")
        elif args.gateway_command == "status":
            pis = manage.status(args.prefix)
            if args.json:
                print(json.dumps(pis, indent=2))
            else:
                print(format_status(pis))
        else:
            for name in manage.remove(args.name, args.prefix):
                print(f"removed kernelspec {name}")
        return 0
    except GatewayError as exc:
        print(f"edgekernel: {exc}", file=sys.stderr)
        return 2


def _ago(when: float | None, now: float) -> str:
    if not when:
        return "-"
    seconds = max(0, int(now - when))
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"


def format_status(pis: list[dict[str, Any]], now: float | None = None) -> str:
    """One line per board (free, or who holds it), then each Pi's kernels without a board."""
    now = time.time() if now is None else now
    lines, free, total = [], 0, 0
    for pi in pis:
        if not pi["reachable"]:
            lines.append(f"{pi['name']}: not answering: {pi['error']}")
            continue
        lines.append(f"{pi['name']} ({pi['ssh']}): {len(pi['boards'])} board(s), {len(pi['kernels'])} kernel(s)")
        for board in pi["boards"]:
            total += 1
            device = board["device"].removeprefix("/dev/")
            holder = board.get("holder")
            if holder is None:
                free += 1
                lines.append(f"  {device:<14} free")
                continue
            since = time.strftime("%H:%M:%S", time.localtime(holder["started"])) if holder.get("started") else "?"
            lines.append(f"  {device:<14} {holder.get('user') or '?':<12} kernel {holder.get('kernel_id') or '?'}"
                         f"  since {since}  last activity {_ago(holder.get('last_activity'), now)}"
                         f"  (from {holder.get('owner') or '?'})")
        for kernel in pi["kernels"]:
            if not kernel.get("board"):
                lines.append(f"  {'(no board)':<14} {kernel.get('user') or '?':<12} kernel {kernel.get('kernel_id')}"
                             f"  last activity {_ago(kernel.get('last_activity'), now)}")
    lines.append(f"{free} of {total} boards free")
    return "\n".join(lines)


def add_gateway_parser(sub) -> None:
    p = sub.add_parser("gateway", help="Raspberry Pi gateways: kernels that run on a Pi next to its boards")
    gsub = p.add_subparsers(dest="gateway_command", required=True)
    add = gsub.add_parser("add", help="check a Pi over SSH and install kernelspecs for its boards")
    add.add_argument("name", help="short name for the Pi, used in kernel names (e.g. pi-3)")
    add.add_argument("--ssh", required=True, help="SSH destination: USER@HOST or a ~/.ssh/config alias")
    add.add_argument("--ssh-config", help="ssh client config file to use (ssh -F)")
    add.add_argument("--python", default="python3", help="Python on the Pi that has edgekernel (default python3)")
    lst = gsub.add_parser("list", help="list registered Pis, their boards and kernelspecs")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    rm = gsub.add_parser("remove", help="forget a Pi and delete its kernelspecs")
    rm.add_argument("name")
    st = gsub.add_parser("status", help="who holds each board of each Pi (hub user, kernel, since, last "
                                        "activity), asked of the Pis over SSH")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    for q in (add, lst, rm, st):
        q.add_argument("--prefix", help="kernelspecs under this prefix (e.g. sys.prefix for a shared "
                                        "JupyterHub/Enterprise Gateway install); default: this user")
    p.set_defaults(func=cmd_gateway)

"""``edgekernel gateway ...`` subcommands (thin: the work is in manage.py)."""
from __future__ import annotations

import argparse
import json
import sys

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
        else:
            for name in manage.remove(args.name, args.prefix):
                print(f"removed kernelspec {name}")
        return 0
    except GatewayError as exc:
        print(f"edgekernel: {exc}", file=sys.stderr)
        return 2


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
    for q in (add, lst, rm):
        q.add_argument("--prefix", help="kernelspecs under this prefix (e.g. sys.prefix for a shared "
                                        "JupyterHub/Enterprise Gateway install); default: this user")
    p.set_defaults(func=cmd_gateway)

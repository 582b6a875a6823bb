#!/usr/bin/env bash
# Installs the system packages the test suite needs when they are missing:
# real nats-server and redis-server for the broker tests, Chromium for the
# browser tests, and Go with the sources of the Go libraries the bahamut
# interop tests build against (Debian packages).
# Run as root with apt-get (CI, a fresh dev machine); elsewhere it only says
# what is missing, and the broker tests then fail with the same one line.
set -euo pipefail
missing=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
# The browser tests drive Debian's Chromium (playwright cannot download its own here).
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
# The Go interop tests (test/integration/go-interop.test.ts) build small Go programs offline,
# in GOPATH mode, from the library sources Debian installs under /usr/share/gocode.
command -v go >/dev/null 2>&1 || [ -x /usr/bin/go ] || missing+=(golang-go)
GOSRC=/usr/share/gocode/src/github.com
[ -d "$GOSRC/ugorji/go/codec" ] || missing+=(golang-github-ugorji-go-codec-dev)
[ -d "$GOSRC/gorilla/websocket" ] || missing+=(golang-github-gorilla-websocket-dev)
[ -d "$GOSRC/nats-io/nats.go" ] || missing+=(golang-github-nats-io-go-nats-dev)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # An install that "succeeded" without the files the tests build from is a failure here, not
  # a confusing build error later.
  for dir in ugorji/go/codec gorilla/websocket nats-io/nats.go; do
    if [ ! -d "$GOSRC/$dir" ]; then
      echo "ensure-system-deps: $GOSRC/$dir is still missing after apt-get install" >&2
      exit 1
    fi
  done
else
  echo "missing system packages: ${missing[*]} — install them with: sudo apt-get install -y ${missing[*]}" >&2
fi

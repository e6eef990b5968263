#!/usr/bin/env bash
# Installs Redis, the pub/sub peer of `fanout --peer redis`, from Debian's
# packages. The bench starts and stops its own redis-server; the package's
# service is not needed and is not started.
set -euo pipefail
if command -v redis-server >/dev/null; then
    redis-server --version
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server
redis-server --version

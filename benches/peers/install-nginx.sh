#!/usr/bin/env bash
# Installs nginx, the streaming-relay peer of `chat_stream --peer nginx`, from
# Debian's packages. The bench starts and stops its own nginx with its own
# config; the package's service is not needed and is not started.
set -euo pipefail
if command -v nginx >/dev/null; then
    nginx -v
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx-light || \
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx
nginx -v

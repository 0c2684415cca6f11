#!/usr/bin/env bash
# Installs the Debian 12 packages gptoss-server needs to build and test, only
# those that are missing. Runs apt-get as root (or through sudo).
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config git xz-utils python3 curl clang
      libzmq3-dev libcjson-dev libmicrohttpd-dev libpcre2-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node (>= 18, for `node --test`) and npm run the HTTP integration tests with the official
# openai client; any install of them will do (Debian's nodejs + npm, or nodesource's nodejs).
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

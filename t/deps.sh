#!/bin/sh
# Installs (as root) or names the Debian packages mod_entra needs to build, test and demo.
PKGS="make gcc pkg-config apache2 apache2-dev libapr1-dev libaprutil1-dev libssl-dev
libcurl4-openssl-dev libjansson-dev liblua5.4-dev lua5.4 python3 python3-pytest
python3-requests python3-cryptography curl ca-certificates debhelper dpkg-dev fakeroot
redis-server memcached $EXTRA_PKGS"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "installing:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
else
    echo "missing Debian packages; install them with:"
    echo "  sudo apt-get install -y$missing"
    exit 1
fi

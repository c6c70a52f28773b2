#!/bin/sh
# Installs nixnest-daemon as the machine's Nix daemon (systemd machines other than NixOS; on
# NixOS use the flake's nixosModules.default).
#
#   packaging/install.sh [--prefix DIR] [--destdir DIR] [--binary FILE]
#
#   --prefix DIR   the binary goes to DIR/bin/nixnest-daemon (default /usr/local); the units'
#                  ExecStart= is written to match
#   --destdir DIR  install under the temporary root DIR (for packaging and tests): paths inside
#                  the files stay as if installed at /, and systemd is not told
#   --binary FILE  the daemon to install (default: what `cargo build --release -p
#                  nixnest-daemon` produced, in $CARGO_TARGET_DIR or the checkout's target/)
#
# What goes where:
#   DESTDIR/PREFIX/bin/nixnest-daemon
#   DESTDIR/etc/systemd/system/nix-daemon.socket, nix-daemon.service
#   DESTDIR/PREFIX/sbin/nixnest-uninstall   (packaging/uninstall.sh with this prefix)
#
# The units are whole units with the stock names, placed in /etc/systemd/system, which systemd
# prefers to /lib/systemd/system (Debian's nix-setup-systemd) and /usr/lib/systemd/system.
# Whole units rather than drop-ins, so that the result does not depend on what the stock units
# say, or whether there are any. A unit already in /etc/systemd/system that is not nixnest's
# (the upstream Nix installer links its units there) is moved aside to NAME.pre-nixnest and put
# back by nixnest-uninstall.
#
# Installing does not switch daemons; afterwards run
#   systemctl restart nix-daemon.socket nix-daemon.service
set -eu

here=$(cd "$(dirname "$0")" && pwd)
marker='^# nixnest-managed-unit'
units='nix-daemon.socket nix-daemon.service'

die() {
    echo "install.sh: $*" >&2
    exit 1
}

prefix=/usr/local
destdir=
binary=
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
        --destdir) [ $# -ge 2 ] || die "--destdir needs a directory"; destdir=$2; shift 2 ;;
        --binary) [ $# -ge 2 ] || die "--binary needs a file"; binary=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

# The prefix ends up in a unit's ExecStart= and in a sed expression: keep it to plain path
# characters, so neither systemd (%, $, quotes, spaces) nor sed (|) can read it differently.
case $prefix in
    /*) ;;
    *) die "--prefix must be an absolute path, got '$prefix'" ;;
esac
if printf '%s' "$prefix" | grep -q '[^A-Za-z0-9/._+-]'; then
    die "--prefix may contain only letters, digits and / . _ + -, got '$prefix'"
fi
prefix=${prefix%/}

if [ -z "$binary" ]; then
    binary=${CARGO_TARGET_DIR:-$here/../target}/release/nixnest-daemon
    [ -x "$binary" ] || die "no daemon at $binary: build it with 'cargo build --release -p nixnest-daemon', or pass --binary FILE"
fi
[ -f "$binary" ] && [ -x "$binary" ] || die "--binary $binary is not an executable file"

if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
    die "installing into / needs root (or use --destdir DIR)"
fi

bindir=$destdir$prefix/bin
sbindir=$destdir$prefix/sbin
unitdir=$destdir/etc/systemd/system
install -d -m 0755 "$bindir" "$sbindir" "$unitdir"

# Copy-then-rename: a running daemon keeps its old executable, and no reader sees half a file.
put() { # put MODE DEST < CONTENT
    cat >"$2.nixnest-tmp"
    chmod "$1" "$2.nixnest-tmp"
    mv -f "$2.nixnest-tmp" "$2"
}

put 0755 "$bindir/nixnest-daemon" <"$binary"

for unit in $units; do
    dest=$unitdir/$unit
    if [ -e "$dest" ] || [ -L "$dest" ]; then
        if [ -L "$dest" ] || ! grep -q "$marker" "$dest"; then
            if [ -e "$dest.pre-nixnest" ] || [ -L "$dest.pre-nixnest" ]; then
                die "$dest is not nixnest's and $dest.pre-nixnest exists too; move one of them away"
            fi
            mv "$dest" "$dest.pre-nixnest"
            echo "kept the existing $dest as $dest.pre-nixnest"
        fi
    fi
    sed "s|/usr/local/bin/nixnest-daemon|$prefix/bin/nixnest-daemon|" "$here/systemd/$unit" | put 0644 "$dest"
done

sed "s|^default_prefix=.*|default_prefix=$prefix|" "$here/uninstall.sh" | put 0755 "$sbindir/nixnest-uninstall"

echo "installed $bindir/nixnest-daemon and $unitdir/{nix-daemon.socket,nix-daemon.service}"

if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if ! systemctl is-enabled --quiet nix-daemon.socket 2>/dev/null; then
        echo "nix-daemon.socket is not enabled; to start it at boot: systemctl enable nix-daemon.socket"
    fi
    echo "to switch the running daemon to nixnest: systemctl restart nix-daemon.socket nix-daemon.service"
    echo "to go back to the stock daemon: $prefix/sbin/nixnest-uninstall"
fi

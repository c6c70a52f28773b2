#!/bin/sh
# Goes back to the stock Nix daemon: one command undoes packaging/install.sh.
#
#   nixnest-uninstall [--prefix DIR] [--destdir DIR] [--keep-binary]
#   (the same script as packaging/uninstall.sh; install.sh fills in the default prefix)
#
# On a running system it stops nixnest's nix-daemon.socket/.service (with nixnest's units still
# loaded, so their stop semantics apply), removes the unit files that carry nixnest's marker,
# puts back any NAME.pre-nixnest that install.sh had set aside, reloads systemd and starts
# nix-daemon.socket again from whatever units remain (Debian's, or the Nix installer's). The
# next client connection starts the stock daemon. /etc/default/nixnest, if you wrote one, is
# left alone.
set -eu

default_prefix=/usr/local
marker='^# nixnest-managed-unit'
units='nix-daemon.socket nix-daemon.service'

die() {
    echo "nixnest-uninstall: $*" >&2
    exit 1
}

prefix=$default_prefix
destdir=
keep_binary=
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=${2%/}; shift 2 ;;
        --destdir) [ $# -ge 2 ] || die "--destdir needs a directory"; destdir=$2; shift 2 ;;
        --keep-binary) keep_binary=1; shift ;;
        -h | --help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
    die "uninstalling from / needs root (or use --destdir DIR)"
fi

live=
if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    live=1
fi
unitdir=$destdir/etc/systemd/system

ours() {
    [ -f "$1" ] && [ ! -L "$1" ] && grep -q "$marker" "$1"
}

installed=
for unit in $units; do
    if ours "$unitdir/$unit"; then
        installed=1
    fi
done

if [ -n "$live" ] && [ -n "$installed" ]; then
    systemctl stop nix-daemon.socket nix-daemon.service
fi

for unit in $units; do
    dest=$unitdir/$unit
    if ours "$dest"; then
        rm -f "$dest"
        echo "removed $dest"
    elif [ -e "$dest" ] || [ -L "$dest" ]; then
        echo "left $dest alone: it is not nixnest's"
    fi
    if [ -e "$dest.pre-nixnest" ] || [ -L "$dest.pre-nixnest" ]; then
        if [ -e "$dest" ] || [ -L "$dest" ]; then
            echo "left $dest.pre-nixnest where it is: $dest exists"
        else
            mv "$dest.pre-nixnest" "$dest"
            echo "restored $dest"
        fi
    fi
done

if [ -z "$keep_binary" ]; then
    rm -f "$destdir$prefix/bin/nixnest-daemon"
fi
rm -f "$destdir$prefix/sbin/nixnest-uninstall"

if [ -n "$live" ]; then
    systemctl daemon-reload
    if systemctl cat nix-daemon.socket >/dev/null 2>&1; then
        systemctl start nix-daemon.socket
        echo "nix-daemon.socket is back on the stock units; the next client starts the stock daemon"
    else
        echo "no other nix-daemon units are installed; no Nix daemon is running now"
    fi
fi

#!/bin/sh
# Install xenopsd on a dom0: the Python package (console scripts xenopsd,
# xenopsd-xc, xenopsd-xenlight, xenopsd-simulator, xenops-cli), the systemd
# units, the tmpfiles.d entry that creates the directories with their owners
# and modes, the commented /etc/xenopsd.conf and the docs.
#
#   deploy/install.sh                      install on this host (as root)
#   DESTDIR=/tmp/root PREFIX=/usr deploy/install.sh   stage into a tree (packaging)
#
# On the host itself the package goes into its own virtual environment at
# PREFIX (default /opt/xenopsd), which Debian 12's externally managed Python
# requires and which keeps the daemon's dependencies apart from the system's;
# xenops-cli is linked into /usr/local/bin. With DESTDIR the package is
# installed by pip under DESTDIR/PREFIX, as distribution packages do.
#
# Variables: DESTDIR, PREFIX, SYSCONFDIR (/etc), UNITDIR (/etc/systemd/system),
# TMPFILESDIR (/etc/tmpfiles.d), PYTHON (python3), SKIP_PYTHON=1 to install
# only the files (the package is installed some other way; PREFIX/bin must
# then hold the programs). An existing xenopsd.conf is never overwritten: the
# new one is written beside it as xenopsd.conf.new.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/xenopsd}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-/etc/systemd/system}
TMPFILESDIR=${TMPFILESDIR:-/etc/tmpfiles.d}
PYTHON=${PYTHON:-python3}
BINDIR=$PREFIX/bin
DOCDIR=$PREFIX/share/doc/xenopsd
PYTHON_BIN=$BINDIR/python3  # the package's interpreter, for `python3 -m xenopsd.emu`

if [ "${SKIP_PYTHON:-0}" != 1 ]; then
    if [ -n "$DESTDIR" ]; then
        # --ignore-installed: never uninstall the copy of the Python running this.
        "$PYTHON" -m pip install -q --no-deps --ignore-installed \
            --root "$DESTDIR" --prefix "$PREFIX" "$top"
    else
        [ -x "$PREFIX/bin/python" ] || "$PYTHON" -m venv "$PREFIX"
        "$PREFIX/bin/python" -m pip install -q "$top"
        install -d -m 0755 /usr/local/bin
        ln -sf "$BINDIR/xenops-cli" /usr/local/bin/xenops-cli
    fi
fi

install -d -m 0755 "$DESTDIR$UNITDIR" "$DESTDIR$TMPFILESDIR" "$DESTDIR$SYSCONFDIR" \
    "$DESTDIR$SYSCONFDIR/xenopsd.conf.d" "$DESTDIR$DOCDIR"
for unit in "$here"/systemd/*.service; do
    sed -e "s|@BINDIR@|$BINDIR|g" -e "s|@DOCDIR@|$DOCDIR|g" \
        -e "s|@SYSCONFDIR@|$SYSCONFDIR|g" -e "s|@PYTHON@|$PYTHON_BIN|g" "$unit" \
        > "$DESTDIR$UNITDIR/$(basename "$unit")"
    chmod 0644 "$DESTDIR$UNITDIR/$(basename "$unit")"
done
install -m 0644 "$here/tmpfiles.d/xenopsd.conf" "$DESTDIR$TMPFILESDIR/xenopsd.conf"
conf="$DESTDIR$SYSCONFDIR/xenopsd.conf"
if [ -e "$conf" ] && ! cmp -s "$here/xenopsd.conf" "$conf"; then
    install -m 0644 "$here/xenopsd.conf" "$conf.new"
    echo "kept your $SYSCONFDIR/xenopsd.conf; the new defaults are in xenopsd.conf.new"
else
    install -m 0644 "$here/xenopsd.conf" "$conf"
fi
for doc in xenopsd.md xenops-cli.md operators-guide.md; do
    install -m 0644 "$top/docs/$doc" "$DESTDIR$DOCDIR/$doc"
done

# On the live system, create the directories now and tell systemd.
if [ -z "$DESTDIR" ]; then
    if command -v systemd-tmpfiles >/dev/null; then
        systemd-tmpfiles --create "$TMPFILESDIR/xenopsd.conf"
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
    echo "installed; start with: systemctl enable --now xenopsd-xc (or xenopsd-simulator)"
fi

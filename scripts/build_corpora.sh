#!/usr/bin/env bash
# Build the README's two real corpora from the Debian packages they come from (their licences keep them out of
# the repository): installs the packages with apt-get (as root: through sudo when you are not), then runs
#   python -m xlbtm.scripts.build_corpus manpages --output-dir OUT/manpages   (21 languages of manual pages)
#   python -m xlbtm.scripts.build_corpus gettext  --output-dir OUT/gettext    (English -> 16 languages)
# Usage: bash scripts/build_corpora.sh [OUT]   (OUT defaults to corpora/, which git ignores)
# Made for Debian (bookworm or later); a package this release lacks is skipped with a note. About 10 minutes on
# 2 cores (rendering ~4,600 pages with man), plus the download (~60 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-corpora}

# man-db renders the pages; manpages is English, manpages-<lang> the translations (pt: Brazilian, the
# dummy manpages-pt pulls it in; zh's traditional pages are left out by the builder).
MAN_PACKAGES=(man-db manpages manpages-cs manpages-da manpages-de manpages-es manpages-fi manpages-fr
  manpages-hu manpages-it manpages-ja manpages-nb manpages-nl manpages-pl manpages-pt-br manpages-ru
  manpages-sr manpages-sv manpages-tr manpages-uk manpages-vi manpages-zh)
# Packages whose .mo catalogs under /usr/share/locale made the shared gettext corpus (its domains: coreutils,
# glib20, gtk20, git, gnupg2, libc, iso_639-3, xkeyboard-config, ...), minus the services (a PostgreSQL server,
# PackageKit, polkitd; postgresql-client too, which upgrades an installed server): a corpus should not start
# daemons or upgrade them. Most are installed on any Debian system already.
GETTEXT_PACKAGES=(adduser apt appstream at-spi2-common bash binutils-common coreutils diffutils dpkg findutils
  gawk gettext gettext-base git gnupg-l10n grep gsettings-desktop-schemas iso-codes krb5-locales
  libapt-pkg6.0 libavahi-common-data libc-l10n libdpkg-perl libelf1 libgdk-pixbuf2.0-common libglib2.0-data
  libgnutls30 libgstreamer1.0-0 libgtk2.0-common libidn2-0 libpam-runtime libpopt0 libpq5 login make man-db
  net-tools procps psmisc python-apt-common sed shared-mime-info
  software-properties-common systemd tar wget xdg-user-dirs xkb-data xz-utils)

SUDO=
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "build_corpora: apt-get needs root: run this as root" >&2; exit 1; }
  SUDO=sudo
fi
# Minimal images tell dpkg to drop manual pages and translations; the packages would install without them.
if grep -rqsE '^path-exclude[= ]+/usr/share/(man|locale)' /etc/dpkg/dpkg.cfg.d/; then
  echo "build_corpora: /etc/dpkg/dpkg.cfg.d excludes /usr/share/man or /usr/share/locale (a minimal image):" \
       "remove those path-exclude lines, then rerun (packages installed before need 'apt-get install --reinstall')" >&2
  exit 1
fi

echo "build_corpora: apt-get update" >&2
$SUDO apt-get update -qq
install=()
for p in "${MAN_PACKAGES[@]}" "${GETTEXT_PACKAGES[@]}"; do
  # an installed package already has its files; naming it to apt-get would upgrade it (and its dependencies)
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ]; then
    continue
  elif [ -n "$(apt-cache policy "$p" 2>/dev/null | grep 'Candidate:' | grep -v '(none)')" ]; then
    install+=("$p")
  else
    echo "build_corpora: no package $p in this release; skipped" >&2
  fi
done
if [ ${#install[@]} -gt 0 ]; then
  echo "build_corpora: apt-get install ${install[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${install[@]}" >&2
fi

# The builder needs only the standard library: the project's venv when there is one, else python3 on the tree.
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; fi
"$PY" -m xlbtm.scripts.build_corpus manpages --output-dir "$OUT/manpages"
"$PY" -m xlbtm.scripts.build_corpus gettext --output-dir "$OUT/gettext"
echo "build_corpora: done: $OUT/manpages and $OUT/gettext (use them as --data-dir / --parallel-data-dir)" >&2

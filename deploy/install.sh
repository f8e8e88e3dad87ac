#!/usr/bin/env bash
# Install or upgrade importer as a systemd service. Run as root; safe to run again (an upgrade is
# the same command with the new source): it never overwrites the config, the mappings, the
# password or the inbox, and it replaces the program and the unit file.
#
#   sudo deploy/install.sh [--credential NAME] [SOURCE]
#
#   SOURCE            the project to install: a checkout or a wheel (default: this script's checkout)
#   --credential NAME servicenow-password (default) or servicenow-client-secret (auth = "oauth")
#
# The secret is read without echo from the terminal, or from stdin when it is not a terminal:
#   printf '%s\n' "$PASSWORD" | sudo deploy/install.sh
#
# Environment: PYTHON (default python3, must be 3.11 or newer).
set -euo pipefail

readonly PREFIX=/opt/importer
readonly VENV=$PREFIX/venv
readonly ETC=/etc/importer
readonly INBOX_ROOT=/srv/importer
readonly INBOX=$INBOX_ROOT/inbox
readonly OUTBOX=$INBOX_ROOT/outbox
readonly UNIT=/etc/systemd/system/importer.service
readonly SERVICE_USER=importer
readonly DROP_GROUP=importer-drop

deploy_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source=$(dirname "$deploy_dir")
credential=servicenow-password

die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
step() { printf '==> %s\n' "$*"; }

while [ $# -gt 0 ]; do
  case $1 in
    --credential)
      [ $# -ge 2 ] || die "--credential needs a name"
      credential=$2; shift 2 ;;
    -h|--help)
      sed -n '2,15p' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) source=$1; shift ;;
  esac
done
case $credential in
  servicenow-password|servicenow-client-secret) ;;
  *) die "--credential must be servicenow-password or servicenow-client-secret, not $credential" ;;
esac

[ "$(id -u)" -eq 0 ] || die "run me as root (sudo)"
[ -e "$source" ] || die "nothing to install at $source"
source=$(realpath "$source")
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "$python is missing or older than 3.11; set PYTHON=/path/to/python3.11"

step "users: $SERVICE_USER (runs the service), group $DROP_GROUP (may drop files)"
getent group "$DROP_GROUP" >/dev/null || groupadd --system "$DROP_GROUP"
if ! getent passwd "$SERVICE_USER" >/dev/null; then
  nologin=$(command -v nologin || echo /usr/sbin/nologin)
  useradd --system --user-group --home-dir /var/lib/importer --no-create-home \
    --shell "$nologin" --comment "importer daemon" "$SERVICE_USER"
fi
usermod --append --groups "$DROP_GROUP" "$SERVICE_USER"

step "program: $VENV"
install -d -m 0755 "$PREFIX"
[ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade "$source"
ln -sfn "$VENV/bin/importer" /usr/local/bin/importer
for doc in README.md docs/sandbox.md; do
  if [ -f "$source/$doc" ]; then install -m 0644 "$source/$doc" "$PREFIX/$(basename "$doc")"; fi
done

step "config: $ETC"
# Readable by the service's group, writable only by root: the service cannot change its own config.
install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC"
if [ -e "$ETC/importer.toml" ]; then
  echo "    kept $ETC/importer.toml (compare with $deploy_dir/importer.toml for new keys)"
else
  install -m 0640 -o root -g "$SERVICE_USER" "$deploy_dir/importer.toml" "$ETC/importer.toml"
fi
if [ -e "$ETC/mappings" ]; then
  echo "    kept $ETC/mappings/"
else
  install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC/mappings"
  if [ -d "$source/mappings" ]; then
    find "$source/mappings" -maxdepth 1 -type f -name '*.yaml' \
      -exec install -m 0640 -o root -g "$SERVICE_USER" -t "$ETC/mappings" {} +
  fi
fi

step "inbox: $INBOX"
install -d -m 0755 "$INBOX_ROOT"
if [ -e "$INBOX" ]; then
  echo "    kept $INBOX as it is (owner, mode, mount)"
else
  # setgid: everything dropped belongs to the drop group. No sticky bit: the service must be
  # able to move away files other people dropped.
  install -d -m 2770 -o "$SERVICE_USER" -g "$DROP_GROUP" "$INBOX"
  if command -v setfacl >/dev/null; then
    # Whatever a person's umask, what they drop (and mapping folders they create) stays readable
    # and removable by the service.
    setfacl -m "d:u:$SERVICE_USER:rwX,d:g:$DROP_GROUP:rwX,d:m:rwX" "$INBOX"
  else
    echo "    note: setfacl not found; people dropping files need umask 002 (group-writable files)"
  fi
fi

step "outbox: $OUTBOX"
# --- outbox (tests/test_deploy.py runs this block on its own) ---
if [ -e "$OUTBOX" ]; then
  echo "    kept $OUTBOX as it is (owner, mode, mount)"
else
  # The service writes, the drop group reads, nobody else. setgid: what the service writes
  # belongs to the drop group; the default ACL keeps it group-readable whatever wrote it.
  install -d -m 2750 -o "$SERVICE_USER" -g "$DROP_GROUP" "$OUTBOX"
  if command -v setfacl >/dev/null; then
    setfacl -m "d:u::rwX,d:g::rX,d:g:$DROP_GROUP:rX,d:o::-,d:m:rX" "$OUTBOX"
  else
    echo "    note: setfacl not found; the service writes its answers 0640 with the drop group anyway"
  fi
fi
# --- end outbox ---

step "secret: $ETC/$credential"
secret_file=$ETC/$credential
if [ -s "$secret_file" ]; then
  echo "    kept (to change it: rm $secret_file and run me again, or edit it as root)"
else
  secret=
  if [ -t 0 ]; then
    IFS= read -r -s -p "    $credential for the instance (not echoed): " secret; echo
    IFS= read -r -s -p "    again: " again; echo
    [ "$secret" = "$again" ] || die "the two entries differ; nothing written"
    unset again
  else
    IFS= read -r secret || true
  fi
  [ -n "$secret" ] || die "empty $credential; type it, or pipe it on stdin"
  # Root-only: systemd (PID 1) reads it and hands it to the service as a credential.
  tmp=$(mktemp "$ETC/.$credential.XXXXXX")
  printf '%s' "$secret" >"$tmp"  # printf is a builtin: the secret never appears in a process list
  unset secret
  chown root:root "$tmp"
  chmod 0600 "$tmp"
  mv -f "$tmp" "$secret_file"
fi
if [ "$credential" = servicenow-client-secret ]; then
  echo "    note: uncomment LoadCredential=servicenow-client-secret in a drop-in (systemctl edit importer)"
fi

step "unit: $UNIT"
install -m 0644 "$deploy_dir/importer.service" "$UNIT"
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemd-analyze verify "$UNIT" || true
  # An upgrade: a running service restarts on the new code (a graceful, two-stage stop).
  systemctl try-restart importer.service
else
  echo "    systemd is not running here: skipped daemon-reload"
fi

cat <<EOF

Installed. Next steps:
  1. Edit $ETC/importer.toml: at least [instance] url and username.
  2. Put your mapping files in $ETC/mappings/ (one <name>.yaml per kind of file).
  3. Check config, mappings and the instance, as the service will run:
       systemd-run --pipe --wait --collect -p User=$SERVICE_USER -p Group=$SERVICE_USER \\
         -p SupplementaryGroups=$DROP_GROUP \\
         -p LoadCredential=$credential:$secret_file \\
         $VENV/bin/importer check --config $ETC/importer.toml --remote
  4. Start it now and at every boot:   systemctl enable --now importer
     Follow it:                         journalctl -u importer -f
  5. Let people drop files:            usermod -a -G $DROP_GROUP <user>   (then into $INBOX;
                                       their answers come back in $OUTBOX)
     Another drop folder (a share)?    systemctl edit importer  ->  ReadWritePaths=/that/folder
EOF

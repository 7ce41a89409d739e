# Sourced by scripts/demo and scripts/test (not run on its own): `as_root "$@"` returns at once when
# the script already runs as root (a root shell needs no sudo, and may have none), and otherwise
# runs the same script again through sudo, with the same arguments.
as_root() {
  [ "$(id -u)" -ne 0 ] || return 0
  if ! command -v sudo >/dev/null 2>&1; then
    echo "${0##*/}: needs root, and sudo is not installed: run it as root" >&2
    exit 1
  fi
  local self=$0
  case $self in /*) ;; *) self=$PWD/$self ;; esac
  echo "${0##*/}: not root: running it again with sudo" >&2
  exec sudo -- "$self" "$@"
}

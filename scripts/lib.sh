# Helpers shared by the scripts. Source it; it defines functions only.

step() { printf '\n==> %s\n' "$*" >&2; }

apt_updated=""
# need_pkg CMD PACKAGE: installs Debian's PACKAGE when CMD is not on PATH.
need_pkg() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [ -x "/usr/sbin/$cmd" ] && return 0
  step "installing $pkg (for $cmd)"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null
}

# need_cargo_tool CMD CRATE: installs CRATE with cargo when CMD is missing.
need_cargo_tool() {
  local cmd=$1 crate=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  step "installing $crate"
  cargo install --locked "$crate"
}

# free_port: prints a TCP port nothing listens on now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# absolute PATH: prints PATH made absolute against the current directory (the path
# need not exist). Child processes that change directory then still find it.
absolute() {
  case $1 in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$PWD/${1#./}" ;;
  esac
}

#!/usr/bin/env bash
# Installs the Debian packages the lab, the demo and the tests use, if any is missing. Idempotent:
# a machine that has them all does not touch apt at all.
set -euo pipefail
pkgs=(keepalived haproxy iptables ipset conntrack nftables iproute2 procps net-tools tcpdump socat
      wrk ansible-core ansible-lint openssh-server openssh-client sshpass python3 hyperfine systemd
      # ansible-test sanity (tests/ansible_static.rs): its virtual environments (venv, ensurepip's
      # pip wheel) and the git tree it wants the collection in
      python3-venv git
      prometheus curl tmux
      # make deb and its install test: packaging tools, and what reads the man page and completions
      dpkg-dev binutils man-db groff-base bash-completion zsh fish)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "deps: missing packages ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the services on install; the lab runs its own instances inside namespaces, and a
# root-namespace keepalived would send VRRP adverts from the host (a root-namespace Prometheus
# would scrape and listen on the host): stop and disable them. An sshd is stopped only when this run
# installed it (the Ansible tests run their own inside each LB namespace): one that was already
# running is how someone reaches this machine.
stop=(keepalived haproxy prometheus)
[[ " ${missing[*]} " == *" openssh-server "* ]] && stop+=(ssh)
for svc in "${stop[@]}"; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" >/dev/null 2>&1 || true
    systemctl disable "$svc" >/dev/null 2>&1 || true
  fi
done
command -v cargo >/dev/null || { echo "deps: cargo not found (install Rust with rustup)" >&2; exit 1; }

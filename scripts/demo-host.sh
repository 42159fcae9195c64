#!/usr/bin/env bash
# The one-host demo (scripts/demo.sh shows the cluster): build a busybox OCI image with umoci, start a private agent, import
# the image, and run containers — isolation, limits, copy-on-write, and surviving an agent SIGKILL.
# Everything runs under a temporary root and is removed at the end. Run as root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/install.sh"
venv=${SHOAL_VENV:-$here/.venv}
export PATH="$venv/bin:$PATH"

[ "$(id -u)" = 0 ] || { echo "the demo needs root (namespaces, mounts, cgroups)"; exit 1; }
work=$(mktemp -d /tmp/shoal-demo.XXXXXX)
export SHOAL_AGENT="unix://$work/agent.sock"
agent_pid=""
bold=$(tput bold 2>/dev/null || true); dim=$(tput dim 2>/dev/null || true); off=$(tput sgr0 2>/dev/null || true)

step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$off"; }
quote() { local a out=""; for a in "$@"; do
  if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+-]+$ ]]; then out+="$a "; else out+="'${a//\'/\'\\\'\'}' "; fi
done; printf '%s' "${out% }"; }
show() { printf '%s$ %s%s\n' "$dim" "$(quote "$@")" "$off"; "$@"; }
start_agent() {
  shoal-agent serve --root "$work/root" --listen "$SHOAL_AGENT" --cgroup-parent shoal-demo \
    >>"$work/agent.log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 1 200); do shoal ps >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "agent did not start; its log:"; cat "$work/agent.log"; exit 1
}
net_agent_pid=""
tag=$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')
ns_a="shoal-demo-$tag-a"; ns_b="shoal-demo-$tag-b"; ns_sw="shoal-demo-$tag-sw"
cleanup() {
  set +e
  if [ -n "$net_agent_pid" ]; then
    ids=$(SHOAL_AGENT="unix://$work/net.sock" shoal ps -aq --no-trunc 2>/dev/null)
    [ -n "$ids" ] && SHOAL_AGENT="unix://$work/net.sock" shoal rm -f $ids >/dev/null
    kill "$net_agent_pid" 2>/dev/null && wait "$net_agent_pid" 2>/dev/null
  fi
  for ns in "$ns_a" "$ns_b" "$ns_sw"; do ip netns del "$ns" 2>/dev/null; done
  rmdir /sys/fs/cgroup/*/shoal-demo-net 2>/dev/null
  ids=$(shoal ps -aq --no-trunc 2>/dev/null)
  [ -n "$ids" ] && shoal rm -f $ids >/dev/null
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  for _ in $(seq 1 100); do pgrep -f "agent.runtime.supervisor --root $work/root" >/dev/null || break; sleep 0.1; done
  rmdir /sys/fs/cgroup/*/shoal-demo 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

step "Build a busybox OCI image with umoci (a tool nobody here wrote)"
(
  cd "$work"
  umoci init --layout oci >/dev/null
  umoci new --image oci:demo >/dev/null
  umoci unpack --image oci:demo bundle >/dev/null
  mkdir -p bundle/rootfs/bin bundle/rootfs/etc bundle/rootfs/tmp bundle/rootfs/mnt
  cp /bin/busybox bundle/rootfs/bin/busybox
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "bundle/rootfs/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n' > bundle/rootfs/etc/passwd
  umoci repack --image oci:demo bundle >/dev/null
  umoci config --image oci:demo --config.cmd /bin/sh --config.env PATH=/bin >/dev/null
)
echo "OCI layout at $work/oci"

step "Start a private agent (state in $work/root, socket $SHOAL_AGENT)"
start_agent
show ls -l "$work/agent.sock"

step "Import the image"
show shoal image import "$work/oci" --name demo/busybox:latest
show shoal image ls

step "Run a container in the foreground: it is pid 1 in its own namespaces"
show shoal run --rm --hostname demo demo/busybox sh -c 'echo "hello from $(hostname), pid $$"; ps'

step "Limits: 16M of memory, and a shell that wants more → OOM-killed, exit 137"
set +e
show shoal run --name hog --memory 16M demo/busybox sh -c 'x=a; while true; do x=$x$x; done'
echo "exit status: $?"
set -e
show sh -c "shoal inspect hog | grep -E '\"(reason|exit_code)\"'"
shoal rm hog >/dev/null

step "Copy-on-write: a container's writes land in its own upper layer, never in the image"
show shoal run --name writer demo/busybox sh -c 'echo changed > /etc/passwd; cat /etc/passwd'
show shoal run --rm demo/busybox head -1 /etc/passwd
shoal rm writer >/dev/null

step "Hardening: no mount, no writes to /proc/sys, no host disks"
show shoal run --rm demo/busybox sh -c 'mount -t tmpfs none /mnt 2>&1; echo 1 > /proc/sys/kernel/domainname 2>&1; mknod /tmp/sda b 8 0 2>&1; true'

step "A long-running container, then SIGKILL the agent: the container does not notice"
show shoal run -d --name ticker demo/busybox sh -c 'i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.5; done'
sleep 1.2
show shoal ps
show kill -9 "$agent_pid"
wait "$agent_pid" 2>/dev/null || true
echo "agent killed; waiting 1.5s while the container keeps ticking ..."
sleep 1.5
start_agent
show shoal ps
show shoal logs --tail 4 ticker
show shoal exec ticker sh -c 'echo "exec joins the container: hostname $(hostname), sees $(ls /proc | grep -c "^[0-9]") processes"'
show shoal stop -t 1 ticker
show shoal rm ticker

step "Bridge networking, on two hosts simulated with network namespaces this demo creates"
echo "(nothing is configured in this machine's own network namespace)"
ip netns add "$ns_sw"; ip netns add "$ns_a"; ip netns add "$ns_b"
ip -n "$ns_sw" link add sw type bridge; ip -n "$ns_sw" link set sw up; ip -n "$ns_sw" link set lo up
n=1
for ns in "$ns_a" "$ns_b"; do
  ip link add eth0 netns "$ns" type veth peer name "p$n" netns "$ns_sw"
  ip -n "$ns_sw" link set "p$n" master sw up
  ip -n "$ns" addr add "192.168.250.$n/24" dev eth0; ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
  n=$((n + 1))
done
# The agent joins host A's network namespace only (nsenter --net), as the tests do.
nsenter --net="/run/netns/$ns_a" shoal-agent serve --root "$work/net-root" --listen "unix://$work/net.sock" \
  --cgroup-parent shoal-demo-net --subnet 10.88.0.0/24 >>"$work/net-agent.log" 2>&1 &
net_agent_pid=$!
for _ in $(seq 1 200); do SHOAL_AGENT="unix://$work/net.sock" shoal ps >/dev/null 2>&1 && break; sleep 0.05; done
export SHOAL_AGENT="unix://$work/net.sock"
shoal image import "$work/oci" --name demo/busybox:latest >/dev/null
show shoal run -d --name web -p 8080:80 demo/busybox sh -c 'mkdir /www; echo "hello from $(hostname) at $(ip -4 -o addr show eth0 | cut -d" " -f7)" > /www/index.html; exec httpd -f -p 80 -h /www'
show shoal ps
for _ in $(seq 1 50); do ip netns exec "$ns_b" timeout 2 busybox wget -q -O- http://192.168.250.1:8080/ >/dev/null 2>&1 && break; sleep 0.1; done
echo "from host B, through host A's published port 8080:"
show ip netns exec "$ns_b" timeout 5 busybox wget -q -O- http://192.168.250.1:8080/
echo "from another container on host A, by the web container's address:"
web_ip=$(shoal inspect web | sed -n 's/.*"ip_address": "\(.*\)".*/\1/p')
show shoal run --rm demo/busybox wget -q -O- "http://$web_ip/"

step "Done. Everything is cleaned up on exit. Run the agent for real with:"
echo "  $venv/bin/shoal-agent serve        # state in /var/lib/shoal, socket unix:///run/shoal/agent.sock"
echo "  $venv/bin/shoal run --rm IMAGE CMD"

#!/bin/busybox sh
# /init of the VM tests' guest (tests/tests/kernels.rs): busybox, the agent
# and its libraries in an initramfs. It mounts what a Talos node has
# (cgroup v2 only, tracefs, securityfs), loads the virtio modules, starts the
# agent against the aggregator on the host (qemu user network: the host is
# 10.0.2.2), then makes the load the test checks: an OOM kill in a
# kubelet-shaped cgroup of each cgroup driver, direct I/O on the virtio
# disk, packets to closed ports. Every step says `NWVM <what>` on the
# console, where the test reads it.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
mount -t securityfs securityfs /sys/kernel/security
# As on Talos: tracefs is mounted before the agent starts.
mount -t tracefs tracefs /sys/kernel/tracing
. /etc/nodewatch/vm.env

say() { echo "NWVM $*"; }
fail() { say "error $*"; sleep 3600; }

say "kernel $(uname -r) lockdown=$(cat /sys/kernel/security/lockdown 2>/dev/null || echo unknown)"
for m in $(cat /modules/order); do
	insmod "/modules/$m.ko" || say "insmod $m failed"
done
ip link set lo up
ip link set eth0 up || fail "no eth0"
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
[ -b /dev/vda ] || fail "no /dev/vda"
say "cgroup controllers $(cat /sys/fs/cgroup/cgroup.controllers)"

# A cgroup path below the root: the parents pass the memory controller down,
# the leaf gets the limit.
mkcg() {
	path=/sys/fs/cgroup
	for seg in "$@"; do
		echo "+memory +io +pids" >"$path/cgroup.subtree_control" || fail "subtree_control $path"
		path="$path/$seg"
		mkdir -p "$path"
	done
	echo "$OOM_LIMIT" >"$path/memory.max" || fail "memory.max $path"
	echo 0 >"$path/memory.swap.max" 2>/dev/null
	echo "$path"
}

# A first process that stays, a second that allocates past the limit
# (dd's 64 MiB block buffer is touched by the first read).
oom_in() {
	driver="$1" leaf="$2"
	sh -c "echo \$\$ >$leaf/cgroup.procs && exec sleep 3600" &
	first=$!
	sleep 1
	sh -c "echo \$\$ >$leaf/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=64M count=1" 2>/dev/null &
	hog=$!
	wait $hog
	status=$?
	if kill -0 $first 2>/dev/null; then alive=yes; else alive=no; fi
	say "oom $driver pid=$hog status=$status first_alive=$alive cgroup=${leaf#/sys/fs/cgroup}"
	kill $first 2>/dev/null
}

/bin/nodewatch-agent --config /etc/nodewatch/agent.yaml >/tmp/agent.log 2>&1 &
agent=$!
tail -f /tmp/agent.log | sed 's/^/agent| /' &
n=0
until grep -qE 'eBPF programs loaded|eBPF signals off' /tmp/agent.log; do
	kill -0 $agent 2>/dev/null || fail "agent exited"
	n=$((n + 1))
	[ $n -gt 600 ] && fail "agent did not start eBPF within 300 s"
	sleep 0.5
done
say "agent started"
# The first batch reaches the aggregator, the OOM reader is running.
sleep 2

oom_in cgroupfs "$(mkcg kubepods burstable "pod$POD_UID" "$CONTAINER_ID")"
oom_in systemd "$(mkcg kubepods.slice kubepods-burstable.slice \
	"kubepods-burstable-pod$(echo "$POD_UID" | tr - _).slice" "cri-containerd-$CONTAINER_ID2.scope")"

# Block I/O on the virtio disk, both directions, bypassing the page cache.
dd if=/dev/zero of=/dev/vda bs=4k count=256 oflag=direct conv=fsync 2>/dev/null
dd if=/dev/vda of=/dev/null bs=4k count=256 iflag=direct 2>/dev/null
say "block done $(cat /sys/block/vda/dev)"
# Datagrams to a closed port (skb drop reason NO_SOCKET) and connects to a
# closed port (resets).
i=0
while [ $i -lt 20 ]; do
	echo x | nc -u -w 1 127.0.0.1 9 2>/dev/null
	nc -w 1 127.0.0.1 9 </dev/null 2>/dev/null
	i=$((i + 1))
done
say "net done"
say "workload done"
sleep 3600

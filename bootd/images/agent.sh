#!/bin/sh
# bootd's discovery / hardware-install agent: /init of the discovery image (busybox sh).
#
# The kernel command line carries bootd.url, bootd.node, bootd.state, bootd.token
# and BOOTIF=01-<mac>. The agent brings up the boot NIC, reports the machine's
# inventory with `discovered`, waits until bootd allocates the node, then runs
# the node's hardware-install tasks in order, posts each one's result and log,
# and posts `hardware-installed` (or `problem` with the failing task's output),
# then reboots into whatever bootd says next. Every HTTP call retries with
# backoff; a machine that cannot reach bootd reboots after a bounded time.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
UNREACHABLE_LIMIT=${UNREACHABLE_LIMIT:-600}   # seconds without bootd before a reboot
POLL=${POLL:-5}

log() { echo "bootd-agent: $*" >/dev/console 2>/dev/null || echo "bootd-agent: $*"; }

setup_system() {
  mount -t proc proc /proc
  mount -t sysfs sysfs /sys
  mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
  mount -t tmpfs tmpfs /run
  mount -t tmpfs tmpfs /tmp
  mkdir -p /dev/pts && mount -t devpts devpts /dev/pts 2>/dev/null || true
  load_modules
}

# Coldplug, as udev does on a full system: load the modules whose aliases
# (modules.alias, written at build time) match the devices present, pass after
# pass, since a module loaded in one pass (virtio_pci, a storage controller)
# shows its own devices in the next. Loading every NIC and disk driver the image
# has instead costs seconds under emulation, for hardware that is not there.
# Modaliases are read with the shell's `read` (no process per device) and are
# never globbed (set -f). A machine none of whose NICs matched gets everything.
load_modules() {
  seen=" " pass=0
  while [ $pass -lt 5 ]; do
    new=""
    for f in /sys/bus/*/devices/*/modalias; do
      [ -r "$f" ] && read -r alias < "$f" 2>/dev/null || continue
      case "$seen" in *" $alias "*) continue ;; esac
      seen="$seen$alias " new="$new $alias"
    done
    [ -n "$new" ] || break
    set -f
    modprobe -q -a $new 2>/dev/null
    set +f
    pass=$((pass + 1))
  done
  for m in $(sed -n 's/^always=//p' /etc/bootd-image); do modprobe -q "$m" 2>/dev/null; done
  for dev in /sys/class/net/*; do
    [ "${dev##*/}" = lo ] || return 0
  done
  log "no NIC driver matched this machine's devices: loading every module of the image"
  for m in $(sed -n 's/^modules=//p' /etc/bootd-image); do modprobe -q "$m" 2>/dev/null; done
}

cmdline() { # value of key=... on the kernel command line
  for word in $(cat /proc/cmdline); do
    case "$word" in "$1"=*) echo "${word#*=}"; return 0 ;; esac
  done
  return 1
}

# JSON string content: drop quotes, backslashes and control characters.
js() { printf '%s' "$1" | tr -d '\000-\037"\\'; }

boot_nic() {
  mac=$(echo "$BOOTIF" | sed 's/^01-//; s/-/:/g' | tr 'A-F' 'a-f')
  for dev in /sys/class/net/*; do
    [ "$(cat "$dev/address" 2>/dev/null)" = "$mac" ] && { basename "$dev"; return; }
  done
  for dev in /sys/class/net/*; do
    name=$(basename "$dev")
    [ "$name" = lo ] || { echo "$name"; return; }
  done
}

network_up() {
  cat > /tmp/udhcpc.sh <<'EOF'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    ;;
esac
exit 0
EOF
  chmod +x /tmp/udhcpc.sh
  ip link set lo up
  i=0
  while [ $i -lt 30 ]; do
    NIC=$(boot_nic)
    if [ -n "$NIC" ]; then
      ip link set "$NIC" up
      udhcpc -i "$NIC" -n -q -t 5 -T 2 -s /tmp/udhcpc.sh >/dev/null 2>&1 && return 0
    fi
    i=$((i + 1))
    sleep 2
  done
  return 1
}

# api METHOD PATH [BODY [CONTENT-TYPE [EXTRA-HEADER]]]: prints the response body.
# Retries with backoff (1, 2, 4 .. 30 s) while bootd is unreachable; a 4xx/5xx
# answer is returned as failure at once (busybox wget exits 1 for both, so an
# unreachable server is told apart by a failing connect first).
# Allocation, reset and reinstall rotate the node's token (and allocation may
# rename it): the lease holder, this machine, learns both from /boot/identity.
# Kept in a file, since api() often runs in a command substitution's subshell.
reidentify() {
  mac=$(echo "$BOOTIF" | sed 's/^01-//; s/-/:/g' | tr 'A-F' 'a-f')
  id=$(timeout 30 wget -q -O - "$URL/boot/identity?mac=$mac" 2>/dev/null) || return 1
  t=$(printf '%s\n' "$id" | sed -n 's/^token=//p')
  n=$(printf '%s\n' "$id" | sed -n 's/^node=//p')
  [ -n "$t" ] && [ -n "$n" ] && [ "$t" != "$TOKEN" ] || return 1
  printf 'TOKEN=%s\n' "$t" > /tmp/identity
  TOKEN=$t
  log "new token from bootd (node $n)"
}

api() {
  method=$1 path=$2 body=$3 ctype=${4:-application/json} extra=$5
  url="$URL$path"
  waited=0 delay=1 fresh=
  [ -f /tmp/identity ] && . /tmp/identity
  while :; do
    set -- -q -O - --header "Authorization: Bearer $TOKEN"
    [ -n "$extra" ] && set -- "$@" --header "$extra"
    if [ "$method" = POST ]; then
      set -- "$@" --header "Content-Type: $ctype" --post-data "$body"
    fi
    # busybox 1.35's wget -T segfaults: bound it with timeout instead.
    if out=$(timeout 30 wget "$@" "$url" 2>/tmp/wget.err); then
      printf '%s' "$out"
      return 0
    fi
    if grep -q "server returned error" /tmp/wget.err; then
      if [ -z "$fresh" ] && grep -q "403" /tmp/wget.err && reidentify; then
        fresh=1; continue  # once: the old token was rotated; try again with the new one
      fi
      log "$method $path: $(cat /tmp/wget.err)"
      return 1
    fi
    if [ $waited -ge "$UNREACHABLE_LIMIT" ]; then
      log "bootd unreachable for ${waited}s: rebooting"
      reboot -f
    fi
    sleep $delay
    waited=$((waited + delay))
    delay=$((delay * 2)); [ $delay -gt 30 ] && delay=30
  done
}

report() { # report STATE [MESSAGE]
  api POST "/api/v1/nodes/$NODE/transition" "{\"state\": \"$1\", \"message\": \"$(js "$2")\"}" >/dev/null
}

inventory() {
  dmi() { js "$(cat "/sys/class/dmi/id/$1" 2>/dev/null)"; }
  cpus=$(grep -c '^processor' /proc/cpuinfo)
  model=$(js "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)")
  mem=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)
  disks="" sep=""
  for dev in /sys/block/*; do
    name=$(basename "$dev")
    case "$name" in loop*|ram*|sr*|fd*|dm-*|md*|nbd*|zram*) continue ;; esac
    size=$(( $(cat "$dev/size") * 512 ))
    serial=$(js "$(cat "$dev/device/serial" 2>/dev/null || cat "$dev/serial" 2>/dev/null)")
    dmodel=$(js "$(cat "$dev/device/model" 2>/dev/null)")
    disks="$disks$sep{\"name\": \"$name\", \"size_bytes\": $size, \"serial\": \"$serial\", \"model\": \"$dmodel\"}"
    sep=", "
  done
  nics="" sep=""
  for dev in /sys/class/net/*; do
    name=$(basename "$dev")
    [ "$name" = lo ] && continue
    mac=$(cat "$dev/address")
    driver=$(basename "$(readlink "$dev/device/driver" 2>/dev/null)" 2>/dev/null)
    speed=$(cat "$dev/speed" 2>/dev/null); case "$speed" in ''|-*) speed=null ;; esac
    link=$(cat "$dev/carrier" 2>/dev/null); [ "$link" = 1 ] && link=true || link=false
    nics="$nics$sep{\"name\": \"$name\", \"mac\": \"$mac\", \"driver\": \"$(js "$driver")\", \"speed_mbps\": $speed, \"link\": $link}"
    sep=", "
  done
  bmc=null
  if [ -e /dev/ipmi0 ] && ipmitool lan print 1 >/tmp/lan 2>/dev/null; then
    bip=$(sed -n 's/^IP Address *: *//p' /tmp/lan)
    bmac=$(sed -n 's/^MAC Address *: *//p' /tmp/lan)
    bmc="{\"ip\": \"$(js "$bip")\", \"mac\": \"$(js "$bmac")\"}"
  fi
  printf '{"system": {"vendor": "%s", "product": "%s", "serial": "%s", "uuid": "%s"}, ' \
    "$(dmi sys_vendor)" "$(dmi product_name)" "$(dmi product_serial)" "$(dmi product_uuid)"
  printf '"cpus": %s, "cpu_model": "%s", "memory_kb": %s, "disks": [%s], "nics": [%s], "bmc": %s, "boot_nic": "%s"}' \
    "$cpus" "$model" "${mem:-0}" "$disks" "$nics" "$bmc" "$NIC"
}

# The node's state now; follows a rename (the answer carries the current name).
state_now() {
  self=$(api GET "/api/v1/nodes/$NODE/self") || return 1
  name=$(printf '%s' "$self" | sed -n 's/.*"name": *"\([^"]*\)".*/\1/p')
  [ -n "$name" ] && [ "$name" != "$NODE" ] && { log "renamed: $NODE -> $name"; NODE=$name; }
  printf '%s' "$self" | sed -n 's/.*"state": *"\([^"]*\)".*/\1/p'
}

hardware_install() {
  tasks=$(api GET "/api/v1/nodes/$NODE/tasks") || { report problem "cannot fetch the task list"; return 1; }
  for task in $tasks; do
    log "task $task"
    if ! api GET "/api/v1/nodes/$NODE/tasks/$task" > "/tmp/task-$task"; then
      report problem "cannot fetch task $task"
      return 1
    fi
    sh "/tmp/task-$task" > "/tmp/task-$task.log" 2>&1
    status=$?
    tail -c 16384 "/tmp/task-$task.log" > "/tmp/task-$task.tail"
    api POST "/api/v1/nodes/$NODE/tasks/$task" "$(cat "/tmp/task-$task.tail")" text/plain \
      "X-Task-Status: $status" >/dev/null
    if [ $status -ne 0 ]; then
      report problem "task $task failed (exit $status): $(tail -c 1500 "/tmp/task-$task.log")"
      return 1
    fi
  done
  report hardware-installed "tasks: $(echo $tasks)"
}

main() {
  setup_system
  URL=$(cmdline bootd.url) NODE=$(cmdline bootd.node) STATE=$(cmdline bootd.state)
  TOKEN=$(cmdline bootd.token) BOOTIF=$(cmdline BOOTIF)
  log "node $NODE, state $STATE, bootd $URL"
  if [ -z "$URL" ] || [ -z "$TOKEN" ] || [ "$NODE" = "-" ]; then
    log "no bootd.url/bootd.token/bootd.node on the command line; rebooting in 60 s"
    sleep 60; reboot -f
  fi
  network_up || { log "no DHCP lease on any NIC; rebooting"; sleep 10; reboot -f; }
  log "network up on $NIC"
  case "$STATE" in
    discovering|reset|problem|discovered)
      body="{\"state\": \"discovered\", \"inventory\": $(inventory)}"
      api POST "/api/v1/nodes/$NODE/transition" "$body" >/dev/null || log "discovered not accepted"
      ;;
  esac
  # Wait for allocation (discovered -> hardware-installing) or any other move.
  while :; do
    state_now > /tmp/state || true
    now=$(cat /tmp/state)
    case "$now" in
      hardware-installing) hardware_install; break ;;
      discovered|discovering|reset|problem|'') sleep "$POLL" ;;  # '': bootd busy, ask again
      *) log "state is $now: rebooting"; break ;;
    esac
  done
  sync
  log "rebooting"
  sleep 2
  reboot -f
}

main "$@"
# /init must never exit (the kernel panics): reboot if main ever returns.
reboot -f

#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine, for the tests/test_slurm_*.py tests.
#
#   .ci/slurm_cluster.sh start   install slurm + munge if missing, write the config, start munged, slurmctld and
#                                two slurmd "nodes" (n1, n2 on 127.0.0.1 ports 17001/17002), wait until both are idle
#   .ci/slurm_cluster.sh stop    stop the daemons this script started, by the PIDs it recorded
#   .ci/slurm_cluster.sh status  sinfo
#
# No systemd: every daemon runs in the foreground (-D / -F) in the background of this script, and its PID is kept
# under $STATE. Partitions: `debug` (default, no time limit) and `short` (MaxTime 5 minutes, enforced at submit
# time, for the "over the time limit" test).
set -euo pipefail

STATE=${SLURM_CLUSTER_STATE:-/var/run/visionlaunch-slurm}
CONF_DIR=/etc/slurm
NODES=(n1 n2)
PORTS=(17001 17002)
CPUS_PER_NODE=${SLURM_CLUSTER_CPUS:-1}

install_if_missing() {
  if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
      && command -v munged >/dev/null; then
    return
  fi
  echo "slurm_cluster: installing slurmctld slurmd slurm-client munge (apt)"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
  mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/log/slurm "$STATE"
  chmod 755 /var/spool/slurmctld
  local node_lines="" i
  for i in "${!NODES[@]}"; do
    mkdir -p "/var/spool/slurmd/${NODES[$i]}"
    node_lines+="NodeName=${NODES[$i]} NodeAddr=127.0.0.1 NodeHostname=$(hostname) Port=${PORTS[$i]} CPUs=$CPUS_PER_NODE RealMemory=4000 State=UNKNOWN"$'\n'
  done
  cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by .ci/slurm_cluster.sh: two slurmd "nodes" on one host (Debian's slurm is built with MULTIPLE_SLURMD).
ClusterName=local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again after cred_expire seconds (default 120): short here so that tests are quick.
AuthInfo=cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
EnforcePartLimits=ALL
ReturnToService=2
MpiDefault=none
SlurmctldPort=16817
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
SchedulerType=sched/backfill
$node_lines
PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=$(IFS=,; echo "${NODES[*]}") Default=NO MaxTime=00:05:00 State=UP
EOF
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  mkdir -p /run/munge && chown munge:munge /run/munge
  chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
}

# Start a daemon in the foreground-mode, in the background of this script, and record its PID.
start_daemon() {
  local name=$1; shift
  nohup "$@" >"/var/log/slurm/$name.stdout" 2>&1 &
  echo $! >"$STATE/$name.started"
}

alive() { [ -f "$STATE/$1.started" ] && kill -0 "$(cat "$STATE/$1.started")" 2>/dev/null; }

start() {
  install_if_missing
  if alive slurmctld; then
    echo "slurm_cluster: already running (stop it first with $0 stop)"
    return 0
  fi
  write_config
  # A fresh controller state each time: no jobs or node states left from an earlier cluster.
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*/*
  if ! alive munged; then
    start_daemon munged runuser -u munge -- munged -F --force
  fi
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n </dev/null | unmunge >/dev/null || { echo "slurm_cluster: munged did not start" >&2; exit 1; }
  start_daemon slurmctld slurmctld -D -i
  for node in "${NODES[@]}"; do
    start_daemon "slurmd-$node" slurmd -D -N "$node"
  done
  # Wait (bounded) until both nodes are idle.
  for _ in $(seq 120); do
    if [ "$(sinfo -h -N -p debug -o '%N %t' 2>/dev/null | grep -c ' idle$')" -eq "${#NODES[@]}" ]; then
      echo "slurm_cluster: up: $(sinfo -h -N -p debug -o '%N=%t' | sort -u | tr '\n' ' ')"
      return 0
    fi
    sleep 0.5
  done
  echo "slurm_cluster: the nodes did not become idle within 60 s:" >&2
  sinfo -N >&2 || true
  tail -n 20 /var/log/slurm/*.log >&2 || true
  exit 1
}

stop() {
  local name pid
  for name in slurmd-n2 slurmd-n1 slurmctld munged; do
    [ -f "$STATE/$name.started" ] || continue
    pid=$(cat "$STATE/$name.started")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/$name.started"
  done
  echo "slurm_cluster: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo -N ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

#!/bin/bash
# visionlaunch SLURM job for the run {{run_name}}, written by `visionlaunch submit` on {{date}}.
#
# One launcher per node: srun starts one task on every node, and each task runs `accelerate launch` for that
# node's processes (machine rank = SLURM_NODEID, the head node's address and a free port found below).
# Preemption: SLURM sends USR2 to this script {{signal_seconds}} s before the time limit (--signal=B:USR2@...)
# or you send it (scancel --signal=USR2 --batch JOBID); the script passes it to the training processes, which
# finish their step, write a checkpoint and exit with status 75 (rank 0 leaves preempted.json in the run folder).
# The script then requeues the job (at most {{max_requeues}} times) and the requeued job resumes from that
# checkpoint (train.resume=auto). A job that fails for any other reason is not requeued.
# To submit this exact job again: visionlaunch submit --resume {{run_dir_q}}
{{sbatch_lines}}

# --- environment set-up (visionlaunch submit --setup ...)
{{setup_lines}}

# --- the job (every value below was shell-quoted by visionlaunch: arguments reach the trainer literally)
RUN_DIR={{run_dir_q}}
WORKDIR={{workdir_q}}
PYTHON={{python_q}}
ENTRY=({{entry_q}})
TRAIN_ARGS=({{train_args_q}})
PROCS_PER_NODE={{procs_per_node}}
USE_CPU={{use_cpu}}
MAX_REQUEUES={{max_requeues}}
PREEMPTED_EXIT_CODE={{preempted_exit_code}}
MARKER="$RUN_DIR/{{preempted_marker}}"

set -o pipefail
cd "$WORKDIR" || exit 2
export PYTHONUNBUFFERED=1
if [ "$USE_CPU" = 1 ]; then
  export ACCELERATE_USE_CPU=1  # real DDP over gloo on CPU nodes: without it, accelerate starts unsynchronised copies
fi
ATTEMPT=$(( ${SLURM_RESTART_COUNT:-0} + 1 ))
NUM_PROCESSES=$(( SLURM_NNODES * PROCS_PER_NODE ))
MULTI=()
if [ "$NUM_PROCESSES" -gt 1 ]; then MULTI=(--multi_gpu); fi

# The head node is the first of the allocation (this script runs there). Its address is SLURM's NodeAddr
# (node names do not always resolve); the port is one that is free on it now.
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
HEAD_ADDR=$(scontrol show node "$HEAD_NODE" | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n 1)
HEAD_ADDR=${HEAD_ADDR:-$HEAD_NODE}
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])') || exit 1
echo "visionlaunch: job ${SLURM_JOB_ID} attempt ${ATTEMPT} on ${SLURM_JOB_NODELIST}: ${SLURM_NNODES} node(s) x" \
     "${PROCS_PER_NODE} process(es), head ${HEAD_ADDR}:${PORT}, run folder ${RUN_DIR}"

GOT_SIGNAL=0
SRUN_PID=
forward_signal() {
  GOT_SIGNAL=1
  echo "visionlaunch: USR2 received (time limit near, or preemption): the training processes checkpoint and stop"
  if [ -n "$SRUN_PID" ]; then kill -USR2 "$SRUN_PID" 2>/dev/null; fi  # srun hands it to every task's processes
}
trap forward_signal USR2

rm -f "$MARKER"
# Each node's launcher ignores USR2 (so that it waits for its workers); the workers handle it themselves.
srun --nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=0 \
  bash -c 'trap "" USR2; exec "$0" -m accelerate.commands.launch --machine_rank "$SLURM_NODEID" "$@"' \
  "$PYTHON" "${MULTI[@]}" --num_machines "$SLURM_NNODES" --num_processes "$NUM_PROCESSES" \
  --main_process_ip "$HEAD_ADDR" --main_process_port "$PORT" --mixed_precision no --dynamo_backend no \
  "${ENTRY[@]}" "${TRAIN_ARGS[@]}" &
SRUN_PID=$!
if [ "$GOT_SIGNAL" = 1 ]; then kill -USR2 "$SRUN_PID" 2>/dev/null; fi
# `wait` returns early when a trapped signal arrives: wait again until srun itself has ended.
while true; do
  wait "$SRUN_PID"
  STATUS=$?
  if [ "$STATUS" -gt 128 ] && kill -0 "$SRUN_PID" 2>/dev/null; then continue; fi
  break
done
echo "visionlaunch: training ended with status ${STATUS}"

if [ "$STATUS" -ne 0 ] && { [ -f "$MARKER" ] || [ "$GOT_SIGNAL" = 1 ]; }; then
  if [ "$ATTEMPT" -le "$MAX_REQUEUES" ]; then
    echo "visionlaunch: preempted: requeueing job ${SLURM_JOB_ID} (requeue ${ATTEMPT} of at most ${MAX_REQUEUES});" \
         "it resumes from the newest checkpoint in ${RUN_DIR}/checkpoints"
    if scontrol requeue "$SLURM_JOB_ID"; then exit 0; fi
    echo "visionlaunch: scontrol requeue failed: resubmit with visionlaunch submit --resume ${RUN_DIR}"
  else
    echo "visionlaunch: preempted, and the job was already requeued ${MAX_REQUEUES} time(s) (the cap):" \
         "continue with visionlaunch submit --resume ${RUN_DIR}"
  fi
  exit "$PREEMPTED_EXIT_CODE"
fi
exit "$STATUS"

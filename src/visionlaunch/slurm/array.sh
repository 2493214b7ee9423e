#!/bin/bash
# visionlaunch SLURM job array: {{count}} training runs of {{title}}, written on {{date}}.
# Task i runs the batch script of run i (its own runs/<run>/slurm/job.sh: one launcher per node; preemption ->
# checkpoint -> requeue of that task -> resume), so every task behaves exactly like one `visionlaunch submit` job
# and any run can be submitted again alone with `visionlaunch submit --resume <its run folder>`.
{{sbatch_lines}}

SCRIPTS=({{scripts_q}})
if [ -z "${SLURM_ARRAY_TASK_ID:-}" ] || [ "$SLURM_ARRAY_TASK_ID" -ge "${#SCRIPTS[@]}" ]; then
  echo "visionlaunch: this is a job array: submit it with sbatch (task ids 0-{{last}})" >&2
  exit 2
fi
# exec: the run's script becomes this batch shell, so SLURM's USR2 reaches its trap.
exec bash "${SCRIPTS[$SLURM_ARRAY_TASK_ID]}"

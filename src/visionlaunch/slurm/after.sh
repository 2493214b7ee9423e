#!/bin/bash
# visionlaunch: {{title}}, written on {{date}}. Submitted with --dependency=afterany:<job array>, so it runs once
# every task of the array has ended, however it ended.
{{sbatch_lines}}

# --- environment set-up (--setup ...)
{{setup_lines}}

cd {{workdir_q}} || exit 2
COMMAND=({{command_q}})
echo "visionlaunch: ${COMMAND[*]}"
exec "${COMMAND[@]}"

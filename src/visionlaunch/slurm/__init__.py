"""SLURM: render a batch script for a training run (render), submit it (submit), an ablation as a job array (array),
and list the submitted jobs (jobs). The script itself (job.sh) starts one launcher per node, forwards the preemption
signal and requeues a preempted job, which then resumes from its checkpoint."""

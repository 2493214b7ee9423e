"""visionlaunch: image-classification training from a laptop to a SLURM cluster, one command."""

__version__ = "0.1.0"

"""Ablations: a base config run over a grid or a list of overrides and several seeds, then one table and one
figure. `load_ablation` reads and validates the plan, `run_ablation` runs it here (one process per run),
`write_ablation_results` tabulates whatever run folders exist (also after runs that went as separate jobs)."""

from .plan import Ablation, Variant, load_ablation
from .results import is_complete, write_ablation_results
from .runner import dry_run_text, run_ablation

__all__ = ["Ablation", "Variant", "dry_run_text", "is_complete", "load_ablation", "run_ablation",
           "write_ablation_results"]

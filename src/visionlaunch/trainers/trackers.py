"""Experiment trackers beside metrics.jsonl (which is always written): Weights & Biases through Accelerate's
tracker API when `tracker.name=wandb`.

What goes to W&B: the resolved config and the run identity; step records (step/loss, step/lr, step/grad_norm)
and epoch records (<split>/loss, <split>/acc, <split>/acc5 for train, val, test and their _ema twins, epoch)
against the global optimizer step; the figures as images; the model summary as a file; the final record in the
run summary. Only the main process talks to W&B (Accelerate's rule too).

Offline mode (`tracker.mode=offline` or WANDB_MODE=offline) needs neither network nor key: the run is written under
<dir>/wandb/offline-run-*/ and `wandb sync <that folder>` uploads it later. Online mode without a key would stop
inside wandb.init (or hang ~100 s on a machine without network), so that case is refused before training.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlparse

from visionlaunch.config import TrackerConfig
from visionlaunch.errors import VisionlaunchError

_MODE_ALIASES = {"dryrun": "offline", "run": "online"}


def wandb_mode(cfg: TrackerConfig) -> str:
    mode = cfg.mode or os.environ.get("WANDB_MODE") or "online"
    return _MODE_ALIASES.get(mode, mode)


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:  # wandb's own .netrc reader knows its search path; it is internal, so fall back to the stdlib
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth
        return bool(read_netrc_auth(host=base_url))
    except Exception:
        pass
    try:
        import netrc
        return netrc.netrc(os.environ.get("NETRC")).authenticators(urlparse(base_url).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def check_tracker(cfg: TrackerConfig) -> None:
    """Refuse, before anything is written, a tracker set-up that cannot work."""
    if cfg.name != "wandb":
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise VisionlaunchError(
            "tracker.name=wandb needs the wandb package: pip install 'visionlaunch[wandb]' (or pip install wandb), "
            "or set tracker.name=none.") from None
    mode = wandb_mode(cfg)
    if mode not in ("online", "offline", "disabled", "shared"):
        raise VisionlaunchError(f"W&B mode {mode!r} (from WANDB_MODE) is not one of online, offline, disabled.")
    if mode in ("online", "shared") and not _has_wandb_credentials():
        raise VisionlaunchError(
            "tracker.name=wandb in online mode needs a W&B API key, and none was found (WANDB_API_KEY, or "
            "`wandb login`'s entry in ~/.netrc). Run `wandb login`, or log without network with "
            "tracker.mode=offline (or WANDB_MODE=offline) and upload later with "
            "`wandb sync <dir>/wandb/offline-run-*`.")


def new_run_id() -> str:
    return secrets.token_hex(4)


class RunTracker:
    """The trainer's view of the external trackers: no-ops unless W&B is on and this is the main process."""

    def __init__(self, accelerator, cfg: TrackerConfig, run_path: Path, run_name: str, run_id: str, config: dict):
        # run_id is kept in run.yaml, so a resumed run continues the same W&B run (resume="allow").
        self.accelerator = accelerator
        self.enabled = cfg.name == "wandb" and accelerator.is_main_process
        self.run = None
        if cfg.name != "wandb":
            return
        init = {"name": cfg.run_name or run_name, "id": run_id, "resume": "allow", "mode": wandb_mode(cfg),
                "tags": list(cfg.tags), "group": cfg.group, "entity": cfg.entity}
        if cfg.dir or not os.environ.get("WANDB_DIR"):
            init["dir"] = str(Path(cfg.dir or run_path).expanduser())
            Path(init["dir"]).mkdir(parents=True, exist_ok=True)
        init = {k: v for k, v in init.items() if v is not None}
        # A collective-free call: Accelerate runs it on the main process only.
        accelerator.init_trackers(cfg.project, config=config, init_kwargs={"wandb": init})
        if self.enabled:
            self.run = accelerator.get_tracker("wandb", unwrap=True)

    def log_step(self, record: dict) -> None:
        if self.enabled:
            values = {f"step/{k}": record[k] for k in ("loss", "lr", "grad_norm", "skipped_steps") if k in record}
            self.accelerator.log(values, step=record["step"])

    def log_epoch(self, results: dict, epoch: int, step: int, seconds: float) -> None:
        if self.enabled:
            values = {"epoch": epoch, "time": seconds}
            for split, r in results.items():
                values.update({f"{split}/{k}": r[k] for k in ("loss", "acc", "acc5", "images_per_s") if k in r})
            self.accelerator.log(values, step=step)

    def log_files(self, figures: list[Path], summary: Path | None, step: int) -> None:
        if not self.enabled or self.run is None:
            return
        import wandb
        images = {f"figures/{Path(p).stem}": wandb.Image(str(p)) for p in figures if Path(p).suffix == ".png"}
        if images:
            self.run.log(images, step=step)
        if summary is not None and summary.is_file():
            self.run.save(str(summary), base_path=str(summary.parent), policy="now")

    def log_final(self, final: dict) -> None:
        if self.enabled and self.run is not None:
            self.run.summary.update({k: v for k, v in final.items() if k != "kind" and v is not None})

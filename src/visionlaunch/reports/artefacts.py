"""What follows training, called by the command line: the assignment's figures for a finished (or reloaded) run
(curves, t-SNE of a chosen layer, a grid of 10 random test predictions and the confusion matrix, all stamped with
the run's identifier and date), the trackers' copy of them and of the final record, and the HTML report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from visionlaunch import runfolder as rf
from visionlaunch.config import RunConfig
from visionlaunch.models.inspection import capture_features
from visionlaunch.reports import Stamp, plot_confusion, plot_curves, plot_predictions, plot_tsne, save_predictions
from visionlaunch.reports.html import write_report
from visionlaunch.trainers.evaluation import predict


@torch.no_grad()
def layer_features(model, images: torch.Tensor, layer: str, pipeline, device, batch_size: int = 1000) -> np.ndarray:
    model.eval()
    with capture_features(model, layer) as captured:
        for i in range(0, len(images), batch_size):
            model(pipeline.eval(images[i:i + batch_size].to(device)))
    return torch.cat(captured).numpy()


def make_figures(run_dir: Path, model, data, pipeline, cfg: RunConfig, identity: dict, accelerator) -> list[Path]:
    out = run_dir / rf.FIGURES
    out.mkdir(exist_ok=True)
    stamp = Stamp(ident=identity["ident"], date=identity["date"], run_name=identity["name"])
    test = data.test
    groups = dict(superclasses=test.superclasses, superclass_of=test.superclass_of)  # CIFAR-100's; else None
    paths = list(plot_curves(rf.read_metrics(run_dir / rf.METRICS), out, stamp))

    preds = predict(model, test.images, pipeline, accelerator, tta_flip=cfg.train.tta_flip)  # as the test accuracy
    paths.append(plot_confusion(test.labels.numpy(), preds.numpy(), test.classes, rf.figure_file(out, "confusion"),
                                stamp, **groups))

    g = torch.Generator().manual_seed(cfg.report.seed)
    pick = torch.randperm(len(test), generator=g)[:10]
    # Stored so the HTML report can list the most confused class pairs without reloading the model.
    save_predictions(run_dir, test.labels.numpy(), preds.numpy(), test.classes, grid=pick.numpy(), **groups)
    paths.append(plot_predictions(test.images[pick].numpy(), test.labels[pick].numpy(), preds[pick].numpy(),
                                  test.classes, rf.figure_file(out, "predictions"), stamp))

    subset = torch.randperm(len(test), generator=g)[:cfg.report.tsne_samples]
    feats = layer_features(model, test.images[subset], cfg.report.tsne_layer, pipeline, accelerator.device)
    paths.append(plot_tsne(feats, test.labels[subset].numpy(), test.classes, rf.figure_file(out, "tsne"), stamp,
                           layer=cfg.report.tsne_layer, seed=cfg.report.seed, **groups))
    return paths


def after_training(trainer, final: dict) -> None:
    """Once `trainer.fit()` returned `final`: figures, the trackers' copy of them and of the final record, the
    report and the closing line. The trainer's signal handlers are still on: a signal now stops at once."""
    run_path, is_main = trainer.run_path, trainer.is_main
    figures = []
    if is_main and trainer.cfg.report.figures:
        trainer.log("drawing figures (curves, t-SNE, predictions, confusion matrix) ...")
        figures = make_figures(run_path, trainer.raw_model, trainer.data, trainer.pipeline, trainer.cfg,
                               trainer.identity, trainer.accelerator)
    trainer.tracker.log_files(figures, run_path / rf.SUMMARY, final["steps"])
    trainer.tracker.log_final(final, final["steps"])
    if is_main:
        trainer.log(f"report: {write_report(run_path)}")
    if is_main and final["test_acc"] is not None:
        trainer.log(f"done in {final['time']:.1f} s: test accuracy {100 * final['test_acc']:.2f}%"
                    + (f", best val {100 * final['best_val_acc']:.2f}% at epoch {final['best_epoch']}"
                       if final["best_val_acc"] is not None else "") + f" -> {run_path}")

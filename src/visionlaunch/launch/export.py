"""`visionlaunch export RUN --format torchscript|onnx|safetensors`: a run's weights in a file that loads without
visionlaunch, with <file>.json beside it saying how to feed it: a float32 batch (N, C, H, W) of the run's input shape,
pixels / 255 normalised with the JSON's mean and std, gives logits (N, classes). docs/after-training.md shows how to load
each format."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from visionlaunch import __version__
from visionlaunch.atomic import atomic_write, atomic_write_text, writes_directly
from visionlaunch.errors import VisionlaunchError
from visionlaunch.launch.evaluate import RunModel, load_run_model
from visionlaunch.runfolder import check_not_run_file

SUFFIX = {"torchscript": ".torchscript.pt", "onnx": ".onnx", "safetensors": ".safetensors"}
ONNX_OPSET = 17


def require_package(fmt: str) -> None:
    """onnx and safetensors need the package of their name (torch writes TorchScript itself)."""
    if fmt == "torchscript":
        return
    try:
        __import__(fmt)
    except ImportError:
        extra = " onnxruntime" if fmt == "onnx" else ""
        raise VisionlaunchError(
            f"--format {fmt} needs the {fmt} package, which is not installed. Install it with pip install "
            f"'visionlaunch[export]' (or pip install {fmt}{extra}), or choose another format "
            f"({', '.join(f for f in SUFFIX if f != fmt)}).") from None


def write_model(run: RunModel, fmt: str, path: Path) -> None:
    with atomic_write(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but it is still the format plain `torch.jit.load`
        # reads everywhere, and the TorchScript-based ONNX exporter needs no onnxscript and makes the batch dimension
        # dynamic simply; the tracer's notes concern the input-shape checks, fixed for the run's shape anyway.
        for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        example = torch.randn(2, *run.in_shape, generator=torch.Generator().manual_seed(0))
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(run.model, example, check_trace=True), str(tmp))
        elif fmt == "onnx":
            import onnx

            torch.onnx.export(run.model, (example,), str(tmp), dynamo=False, input_names=["input"],
                              output_names=["logits"], opset_version=ONNX_OPSET,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            onnx.checker.check_model(str(tmp))
        else:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
            save_file(state, str(tmp), metadata={
                "model_name": run.ckpt["model_name"], "model_args": json.dumps(run.ckpt["model_args"]),
                "input_shape": json.dumps(list(run.in_shape)), "classes": json.dumps(run.classes)})


def sidecar(run: RunModel, fmt: str, path: Path) -> dict:
    return {
        "format": fmt, "file": path.name, "run": run.run_dir.name, "weights": run.which, "epoch": run.epoch,
        "classes": run.classes, "input_shape": list(run.in_shape), "input_dtype": "float32",
        "input": "NCHW pixels / 255, then (x - mean) / std per channel", "mean": list(run.mean), "std": list(run.std),
        "output": "logits (N, classes); softmax for probabilities", "tta_flip": run.tta_flip,
        "input_name": "input" if fmt == "onnx" else None, "output_name": "logits" if fmt == "onnx" else None,
        "model": {"name": run.ckpt["model_name"], "args": run.ckpt["model_args"]},
        "visionlaunch": __version__, "torch": str(torch.__version__),
    }


def export_run(run_dir: Path, fmt: str, which: str = "last", out: Path | None = None) -> tuple[Path, ...]:
    require_package(fmt)  # before anything is loaded or written
    path = Path(out) if out is not None else Path(run_dir) / "export" / f"{which}{SUFFIX[fmt]}"
    json_path = path.with_name(path.name + ".json")
    check_not_run_file(path)
    check_not_run_file(json_path)
    if path.is_dir():
        raise VisionlaunchError(f"--out {path} is a folder. Give a file name, e.g. --out "
                                f"{path / (which + SUFFIX[fmt])}.")
    direct = writes_directly(path)  # a device or a pipe (refuses a socket, ...) before anything is loaded
    run = load_run_model(run_dir, which)
    write_model(run, fmt, path)
    if direct:  # nothing is placed beside a device or a pipe (/dev/null.json)
        return (path,)
    atomic_write_text(json_path, json.dumps(sidecar(run, fmt, path), indent=1) + "\n")
    return path, json_path

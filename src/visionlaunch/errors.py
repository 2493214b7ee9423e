"""The one exception type a user sees, and the last-resort translation of the environment's own errors (a file that
cannot be read or written, a full disk, a file in the wrong format) into one paragraph; anything else is a bug and
keeps its traceback. Imports nothing heavy: the command line uses it before torch is loaded.
"""

from __future__ import annotations

import errno
import sys

EXIT_BAD_INPUT = 2


class VisionlaunchError(Exception):
    """A problem with the user's input that they can fix; the message says what was wrong and how to fix it. The
    command line prints it without a traceback and exits with status 2."""

    exit_code = EXIT_BAD_INPUT


def report(exc: VisionlaunchError) -> int:
    """Print the error's paragraph on stderr, once however often it is reported (a survivor of a lost peer says it
    before its teardown, the command line again after it), and return its exit status."""
    if not getattr(exc, "reported", False):
        print(f"visionlaunch: error: {exc}", file=sys.stderr, flush=True)
        exc.reported = True
    return exc.exit_code


# What to do about an OSError, by errno. A write that fails never leaves a half-written file behind (every file
# is written to a temporary name and renamed), so the advice can promise that what was there before is intact.
_OS_ADVICE = {
    errno.ENOSPC: "The disk is full: free space (or point output.dir / data.cache_dir at another disk) and run again. "
                  "Files written before are intact (every write goes to a temporary file that is renamed when "
                  "complete); a training run continues from its last checkpoint with train.resume=auto.",
    errno.EFBIG: "The file would exceed this process's file-size limit (`ulimit -f`): raise the limit or write to "
                 "another place, and run again. Files written before are intact; a training run continues from its "
                 "last checkpoint with train.resume=auto.",
    errno.EACCES: "Permission denied: make it readable (or its folder writable) for this user, or point the config "
                  "at another location.",
    errno.EPERM: "Operation not permitted: make it accessible for this user, or point the config at another "
                 "location.",
    errno.EROFS: "The file system is read-only: point output.dir / data.cache_dir at a writable folder.",
    errno.ENOENT: "It does not exist: check the path (relative paths start from the current folder).",
    errno.EISDIR: "A folder stands where a file is expected: remove or rename it, or pass the file itself.",
    errno.ENOTDIR: "A file stands where a folder is expected: check the path.",
    errno.ENAMETOOLONG: "The name is too long for the file system (255 bytes per name): choose a shorter one.",
    errno.EIO: "The disk reported an I/O error: check the device and run again.",
}
if hasattr(errno, "EDQUOT"):
    _OS_ADVICE[errno.EDQUOT] = _OS_ADVICE[errno.ENOSPC].replace("The disk is full", "The disk quota is exhausted")


def describe_os_error(exc: OSError) -> str:
    """'<file>: <reason>. <what to do>' for an OSError (the file named when the error carries it)."""
    where = " -> ".join(str(n) for n in (exc.filename, exc.filename2) if n is not None)
    reason = exc.strerror or str(exc) or type(exc).__name__
    advice = _OS_ADVICE.get(exc.errno, "")
    return f"{where + ': ' if where else ''}{reason}{'' if reason.endswith('.') else '.'}{' ' + advice if advice else ''}"


def describe_load_failure(exc: BaseException) -> str:
    """Why torch.load (weights_only=True) failed, in a few words: never PyTorch's advice to retry with
    weights_only=False, which would run whatever code a foreign file holds."""
    text = " ".join(str(exc).split())
    if "Weights only load failed" in text and "Unsupported global" in text:
        return ("it holds objects other than tensors and plain data, which visionlaunch refuses to load (loading "
                "them could run arbitrary code)")
    if "Weights only load failed" in text:  # bytes that are no pickle: keep the unpickler's own words only
        detail = text.partition("WeightsUnpickler error: ")[2].partition(" Check the documentation")[0]
        return f"it is truncated, damaged or not a PyTorch file ({detail[:200] or 'it cannot be unpickled'})"
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    return f"it is truncated, damaged or not a PyTorch file ({type(exc).__name__}: {text[:200] or 'no details'})"


def _named(exc: BaseException, module: str, *names: str) -> bool:
    """`exc` is an instance of a class called one of `names` from package `module` (checked by name, so that this
    module need not import PIL, safetensors or torch)."""
    return any(cls.__module__.split(".")[0] == module and cls.__name__ in names for cls in type(exc).__mro__)


def describe_environment_error(exc: BaseException) -> str | None:
    """One paragraph for an error caused by the environment or by a file's content, or None for anything else
    (a bug, which keeps its traceback)."""
    import pickle

    if isinstance(exc, OSError) and _named(exc, "PIL", "UnidentifiedImageError"):
        return f"{exc}. The file is not an image PIL can read: remove or replace it."
    if isinstance(exc, OSError) and (exc.filename is not None or exc.errno in _OS_ADVICE):
        return describe_os_error(exc)
    if _named(exc, "PIL", "DecompressionBombError"):
        return (f"an image is too large to decode safely: {exc} Shrink it, or remove it from the dataset (images of "
                "one training set share one size).")
    if _named(exc, "yaml", "YAMLError"):
        return f"a YAML file could not be read: {exc}. Fix its syntax (it must be a YAML mapping)."
    if isinstance(exc, UnicodeDecodeError):
        return (f"a text file is not UTF-8 text ({exc}). Config, ablation and run files are UTF-8 YAML: save it as "
                "UTF-8, or pass the right file.")
    if isinstance(exc, pickle.UnpicklingError) or _named(exc, "safetensors", "SafetensorError"):
        return (f"a data, weights or checkpoint file could not be decoded ({type(exc).__name__}: {str(exc)[:300]}). "
                "It is truncated, damaged or not the kind of file expected: replace it.")
    return None

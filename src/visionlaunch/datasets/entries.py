"""What a folder or an archive holds, one entry at a time: the only file walker of visionlaunch. The ImageFolder
reader (training, `evaluate --data`) and `predict` both walk with it, so a path means the same files to every
command.

walk(path) yields an Entry(parts, display, kind, payload, why) for everything under `path`: a folder's content
sorted by name (links followed), a tar archive's members in their order (one streaming pass, .tar and its gzip,
bzip2 and xz forms), a zip archive's members sorted by name; a single file is one entry.
  kind "folder"   a folder; payload None
  kind "file"     a regular file; payload is its Path (in a folder: read when it is decoded) or its bytes (an archive
                  member, read as the archive goes by; only members that `wanted(parts)` accepts are read or
                  checked, the others come with b"")
  kind "skipped"  something never read; `why` says why. One rule for every command:
    - hidden names (starting with ".") and __MACOSX (macOS resource forks): a hidden folder is one entry, its
      content is not walked;
    - a folder that cannot be listed, a file that cannot be looked at (permissions);
    - a link that dangles or loops, a link to a folder that contains it (the tree would never end) or to a folder
      already walked (its files would count twice); other links are followed, so a dataset of links works;
    - anything that is neither a file nor a folder (a FIFO would block the reader forever): never opened;
    - archive members that are links (symbolic or hard), FIFOs or devices, or whose name is absolute or has a ".."
      part; encrypted zip members and zip members compressed with a method Python cannot read;
    - archive members larger than MAX_MEMBER_BYTES: never read (a small archive can hold a member of gigabytes:
      extract such an archive and pass the folder, whose files have no limit).
`located=True` (an uncompressed .tar or a .zip, which can be read at any place): a wanted member's payload is a
Member (where its bytes lie in the archive) instead of its bytes, and `read_member` reads it when it is decoded, so
an archive is indexed without holding its content (a zip member compressed with another method than stored or
deflated still comes as its bytes). A compressed tar can only be read from the start: `seekable`
says which archives can.
What a skipped entry means is the caller's: `predict` names and counts it, the ImageFolder reader refuses one
inside train/ or test/ (the dataset would silently lack it). A path that cannot be opened or read as a whole (a
damaged archive, a folder that cannot be listed) is an error naming it.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from visionlaunch.errors import VisionlaunchError, describe_os_error
from visionlaunch.progress import progress_bar

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
IGNORED_NAMES = ("__MACOSX",)  # resource forks that macOS adds to archives
MAX_MEMBER_BYTES = 64 << 20  # the most bytes read from one archive member (64 MiB)
_ZIP_ENCRYPTED = 0x1


@dataclass(frozen=True, slots=True)
class Member:
    """Where an archive member's bytes lie: `offset` (a tar member's data; a zip member's local header), `size`
    (bytes stored) and `method` (zip compression: 0 stored, 8 deflated; 0 for tar)."""
    offset: int
    size: int
    method: int = 0


@dataclass(frozen=True, slots=True)  # slots: a folder of a million files makes a million of these
class Entry:
    parts: tuple[str, ...]  # path inside the folder or archive, split into names
    display: str  # how to name it: a file path, or "archive.tar.gz:member"
    kind: str  # "file", "folder" or "skipped"
    payload: bytes | str | Path | Member | None = None  # a member's bytes (or Member), a file's path (its str)
    why: str = ""  # a skipped entry: why it is not read


def is_archive(path: Path | str) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def seekable(path: Path | str) -> bool:
    """An archive whose members can be read in any order (uncompressed tar, zip): it can be read out of core."""
    name = str(path).lower()
    return name.endswith((".tar", ".zip"))


_ZIP_LOCAL_HEADER = 30  # bytes before a zip member's name, then name and extra field, then its data


def read_member(archive: Path | str, member: Member) -> bytes:
    """The bytes of one member of a seekable archive, read where `member` says (the archive opened for this read
    only: a DataLoader worker forked with an open file would share its position)."""
    with open(archive, "rb") as f:
        f.seek(member.offset)
        if not str(archive).lower().endswith(".zip"):
            return f.read(member.size)
        header = f.read(_ZIP_LOCAL_HEADER)
        if len(header) < _ZIP_LOCAL_HEADER or header[:4] != b"PK\x03\x04":
            raise OSError(errno.EIO, f"no zip member at byte {member.offset}: the archive changed", str(archive))
        skip = int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
        f.seek(skip, os.SEEK_CUR)
        data = f.read(member.size)
    return data if member.method == zipfile.ZIP_STORED else zlib.decompress(data, -zlib.MAX_WBITS)


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES


def _hidden_why(name: str) -> str:
    return "a hidden name (starts with '.'): not read" if name.startswith(".") else \
        f"{name} (files macOS adds to archives): not read"


def walk(path: Path, wanted: Callable[[tuple[str, ...]], bool] = lambda parts: True,
         progress: bool = False, located: bool = False) -> Iterator[Entry]:
    """Every entry under `path` (module docstring). `wanted`: which archive members to read (the rest are b"").
    `located`: a seekable archive's wanted members come as a Member, unread."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise VisionlaunchError(f"cannot read {describe_os_error(exc)}") from None
    if stat.S_ISDIR(info.st_mode):
        yield from _walk_folder(path, info)
    elif not stat.S_ISREG(info.st_mode):
        yield Entry((path.name,), str(path), "skipped", why=_special_why(info.st_mode))
    elif path.name.lower().endswith(".zip"):
        yield from _walk_zip(path, wanted, located)
    elif is_archive(path):
        yield from _walk_tar(path, wanted, progress, located and seekable(path))
    else:
        yield Entry((path.name,), str(path), "file", path)


def _special_why(mode: int) -> str:
    what = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a symbolic link" if stat.S_ISLNK(mode) else
            "a special file")
    return f"{what}, neither a file nor a folder: never opened"


def _walk_folder(root: Path, top: os.stat_result) -> Iterator[Entry]:
    walked: dict[tuple[int, int], str] = {(top.st_dev, top.st_ino): str(root)}

    # Paths as str, not Path: a Path keeps every component of itself as another string, and a folder of a million
    # files would hold a million of them while it is indexed.
    def visit(folder: str, rel: tuple[str, ...], ancestors: frozenset) -> Iterator[Entry]:
        try:
            with os.scandir(folder) as listing:
                children = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            if not rel:  # the folder given itself
                raise VisionlaunchError(f"cannot list the folder {describe_os_error(exc)}") from None
            yield Entry(rel, folder, "skipped", why=f"a folder that cannot be listed ({exc.strerror})")
            return
        for child in children:
            path, parts = child.path, rel + (child.name,)
            if is_hidden(child.name):
                yield Entry(parts, path, "skipped", why=_hidden_why(child.name))
                continue
            try:
                info = os.stat(path)  # through links
            except OSError as exc:
                if not child.is_symlink():
                    why = f"a file that cannot be looked at ({exc.strerror})"
                elif exc.errno == errno.ELOOP:
                    why = "a link loop"
                else:
                    why = f"a dangling link (to {os.readlink(path)}, which does not exist)"
                yield Entry(parts, path, "skipped", why=why)
                continue
            if stat.S_ISDIR(info.st_mode):
                identity = (info.st_dev, info.st_ino)
                if identity in ancestors:
                    yield Entry(parts, path, "skipped", why=f"a link to {os.path.realpath(path)}, a folder "
                                "that contains the link: following it would never end")
                elif identity in walked:
                    yield Entry(parts, path, "skipped", why=f"the same folder as {walked[identity]}, reached "
                                "through a link: its files would count twice")
                else:
                    walked[identity] = path
                    yield Entry(parts, path, "folder")
                    yield from visit(path, parts, ancestors | {identity})
            elif stat.S_ISREG(info.st_mode):
                yield Entry(parts, path, "file", path)
            else:
                yield Entry(parts, path, "skipped", why=_special_why(info.st_mode))

    yield from visit(str(root), (), frozenset(walked))


def _member_parts(name: str) -> tuple[tuple[str, ...], str]:
    """A member name split into parts, and why it is refused ('' when it is not)."""
    parts = tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))
    if name.startswith("/") or ".." in parts:
        return parts, "an absolute name or one with a '..' part, which points outside the archive: not read"
    return parts, ""


class _Hidden:
    """Archive members under a hidden name: the first one reported (the hidden folder, once), the others dropped."""

    def __init__(self, archive: Path):
        self.archive, self.told = archive, set()

    def __call__(self, parts: tuple[str, ...]) -> list[Entry] | None:
        """None when no part of `parts` is hidden, else what to report (nothing when already reported)."""
        for i, name in enumerate(parts):
            if is_hidden(name):
                if parts[:i + 1] in self.told:
                    return []
                self.told.add(parts[:i + 1])
                return [Entry(parts[:i + 1], f"{self.archive}:{'/'.join(parts[:i + 1])}", "skipped",
                              why=_hidden_why(name))]
        return None


def _too_large(size: int) -> str:
    return (f"{size:,} bytes, over the {MAX_MEMBER_BYTES >> 20} MiB read from one archive member: not read "
            "(extract the archive and pass the folder)")


def _archive_error(path: Path, exc: BaseException, kind: str, advice: str) -> VisionlaunchError:
    if isinstance(exc, OSError) and exc.errno is not None:  # permissions and the like: the archive is not damaged
        return VisionlaunchError(f"cannot read the {kind} archive {describe_os_error(exc)}")
    return VisionlaunchError(f"{path} could not be read as a {kind} archive ({type(exc).__name__}: {exc}); it is "
                             f"probably truncated or damaged. {advice}")


def _walk_tar(path: Path, wanted, progress: bool, located: bool = False) -> Iterator[Entry]:
    hidden = _Hidden(path)
    try:
        # Stream mode: one forward pass over the (compressed) archive, each member read as it goes by; a member not
        # read is skipped in bounded chunks. Located: the uncompressed archive's headers only, from place to place.
        with tarfile.open(path, "r:" if located else "r|*") as tar, \
                progress_bar(desc=f"reading {path.name}", unit=" files", disable=not progress, leave=False) as bar:
            while (member := tar.next()) is not None:
                tar.members.clear()  # tarfile keeps every header it reads: a million of them for a large archive
                parts, refused = _member_parts(member.name)
                display = f"{path}:{member.name}"
                if not parts:
                    continue
                if refused:
                    yield Entry(parts, display, "skipped", why=refused)
                elif (report := hidden(parts)) is not None:
                    yield from report
                elif member.isdir():
                    yield Entry(parts, display, "folder")
                elif member.isfile():
                    if not wanted(parts):
                        yield Entry(parts, display, "file", b"")
                    elif member.size > MAX_MEMBER_BYTES:
                        yield Entry(parts, display, "skipped", why=_too_large(member.size))
                    elif located:
                        yield Entry(parts, display, "file", Member(member.offset_data, member.size))
                    else:
                        yield Entry(parts, display, "file", tar.extractfile(member).read())
                    bar.update()
                else:
                    what = ("a symbolic link" if member.issym() else "a hard link" if member.islnk() else
                            "a FIFO" if member.isfifo() else "a device" if member.ischr() or member.isblk() else
                            "not a regular file")
                    link = f" (to {member.linkname})" if member.issym() or member.islnk() else ""
                    yield Entry(parts, display, "skipped", why=f"{what}{link}, not a file: not read (create the "
                                "archive with the files themselves, e.g. GNU tar --dereference --hard-dereference)")
    # TypeError/ValueError: what tarfile itself raises on some garbage headers (a Python bug, not ours).
    except (tarfile.TarError, EOFError, OSError, zlib.error, TypeError, ValueError) as exc:
        raise _archive_error(path, exc, "tar", "Copy or create it again (e.g. `tar czf data.tar.gz train test`).") \
            from exc


def _walk_zip(path: Path, wanted, located: bool = False) -> Iterator[Entry]:
    hidden = _Hidden(path)
    advice = "Copy or create it again, or extract it and pass the folder."
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise _archive_error(path, exc, "zip", advice) from exc
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            parts, refused = _member_parts(info.filename)
            display = f"{path}:{info.filename}"
            if not parts:
                continue
            unix_type = stat.S_IFMT(info.external_attr >> 16)
            if refused:
                yield Entry(parts, display, "skipped", why=refused)
            elif (report := hidden(parts)) is not None:
                yield from report
            elif info.is_dir():
                yield Entry(parts, display, "folder")
            elif unix_type not in (0, stat.S_IFREG):
                yield Entry(parts, display, "skipped", why=_special_why(unix_type))
            elif not wanted(parts):
                yield Entry(parts, display, "file", b"")
            elif info.flag_bits & _ZIP_ENCRYPTED:
                yield Entry(parts, display, "skipped", why="encrypted (it needs a password): not read (extract the "
                            "archive with its password and pass the folder)")
            elif info.file_size > MAX_MEMBER_BYTES:
                yield Entry(parts, display, "skipped", why=_too_large(info.file_size))
            elif located and info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                yield Entry(parts, display, "file", Member(info.header_offset, info.compress_size, info.compress_type))
            else:  # read now (a located walk too, for a method other than stored or deflated)
                try:
                    with zf.open(info) as member:
                        data = member.read(MAX_MEMBER_BYTES + 1)  # zipfile stops at the declared size anyway
                except NotImplementedError:
                    yield Entry(parts, display, "skipped", why=f"compressed with a method Python cannot read "
                                f"(zip method {info.compress_type}): not read (extract the archive and pass the "
                                "folder)")
                    continue
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
                    if isinstance(exc, OSError) and exc.errno is not None:
                        raise _archive_error(path, exc, "zip", advice) from exc
                    yield Entry(parts, display, "skipped", why=f"damaged ({type(exc).__name__}: {exc})")
                    continue
                yield Entry(parts, display, "file", data)

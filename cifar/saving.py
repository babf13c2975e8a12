"""When a run cannot save (a full disk, a quota, a read-only or vanished folder): one message, not a traceback.

Every file a run writes appears complete or not at all (:mod:`cifar.files`, :mod:`cifar.checkpoint`), so a
failed write loses nothing that was saved before it. What the user needs is the rest of that story: what could
not be saved where, why, which complete checkpoint is there to continue from, and the command that continues.
:class:`SaveFailed` carries the first three; :func:`failure_message` adds the others once the run has stopped.
The process then exits with :data:`EXIT_SAVE_FAILED`.
"""

from __future__ import annotations

import errno
import shlex
from pathlib import Path
from typing import Sequence

from cifar import checkpoint as ckpt

EXIT_SAVE_FAILED = 74  # EX_IOERR (sysexits.h): "an error occurred while doing I/O on some file"
# A fix the user can make for the common causes; any other error is named as it is.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class SaveFailed(Exception):
    """Writing ``what`` into ``folder`` failed with ``reason`` (the OSError's text; ``errno`` its code) in the run
    that writes to ``output_dir``. Plain values only, so the main process can hand it to the others."""

    def __init__(self, what: str, folder: str, reason: str, code: int | None, output_dir: str) -> None:
        super().__init__(what, folder, reason, code, output_dir)  # the arguments again when unpickled
        self.what, self.folder, self.reason, self.errno, self.output_dir = what, folder, reason, code, output_dir

    @classmethod
    def from_error(cls, what: str, folder: Path, error: OSError, output_dir: str | Path) -> SaveFailed:
        return cls(what, str(folder), str(error), error.errno, str(output_dir))

    def __str__(self) -> str:
        return f"could not save {self.what} in {self.folder}: {self.reason}"


def newest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint ``--resume auto`` would continue from (its checksums verify), or None; None as well when
    the folder cannot even be read."""
    try:
        return ckpt.latest_checkpoint(Path(output_dir) / "checkpoints")[0]
    except OSError:
        return None


def resume_command(script: str, argv: Sequence[str], output_dir: str | Path, processes: int) -> str:
    """The command that continues this run: its own arguments with ``--output-dir`` (the default one is named by
    the start time, so it must be given) and ``--resume auto`` in place of any the run had. With several
    processes the launcher's own options are the user's; only train.py's part is known here."""
    kept: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in ("--resume", "--output-dir"):
            skip = True
        elif not word.startswith(("--resume=", "--output-dir=")):
            kept.append(word)
    arguments = shlex.join([script, *kept, "--output-dir", str(output_dir), "--resume", "auto"])
    return f"python {arguments}" if processes == 1 else f"accelerate launch [its launch options] {arguments}"


def failure_message(failure: SaveFailed, newest: Path | None, command: str) -> str:
    """One paragraph for the user: what failed and why, what is safe, what to do, and the command that goes on."""
    if failure.errno in _NO_SPACE:
        fix = f"Free some space for {failure.output_dir}"
    elif failure.errno in _NOT_WRITABLE:
        fix = f"Make {failure.output_dir} writable"
    else:
        fix = "Fix that"
    if newest is None:
        kept = "No checkpoint of this run is complete yet, so it will start again from the beginning"
    else:
        kept = f"Nothing saved before is lost: the newest complete checkpoint is {newest}"
    return f"{failure}. {kept}. {fix}, then continue with: {command}"

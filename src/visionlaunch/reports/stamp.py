"""The mark every figure carries: who made it, on which day, and for which run."""

from __future__ import annotations

import datetime as dt
import getpass
import re
from dataclasses import dataclass

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Stamp:
    """`ident` is report.ident from the config (default: the user name); `date` is "YYYY-MM-DD".

    The date is passed in rather than read from the clock so that a report rebuilt later keeps the run's date.
    """

    ident: str
    date: str
    run_name: str = ""

    def __post_init__(self) -> None:
        if not self.ident.strip():
            raise ValueError("Stamp.ident is empty; set report.ident in the config (it defaults to the user name)")
        if not _DATE.fullmatch(self.date):
            raise ValueError(f"Stamp.date must be 'YYYY-MM-DD', got {self.date!r}")
        dt.date.fromisoformat(self.date)  # rejects impossible dates such as 2024-02-30

    def text(self) -> str:
        """'<ident> · <date>', followed by ' · <run_name>' when a run name was given."""
        return " · ".join(part for part in (self.ident.strip(), self.date, self.run_name.strip()) if part)

    @classmethod
    def today(cls, ident: str = "", run_name: str = "") -> Stamp:
        """A stamp dated today; an empty ident falls back to the login name."""
        return cls(ident=ident or _user_name(), date=dt.date.today().isoformat(), run_name=run_name)


def _user_name() -> str:
    # getpass raises in containers whose uid has no passwd entry; a figure should still get a stamp there.
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"

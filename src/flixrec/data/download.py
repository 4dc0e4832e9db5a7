"""Fetch a MovieLens data set: `python -m flixrec.data.download NAME DIR`.

NAME is ml-100k, ml-1m, ml-latest-small or ncf-ml-1m. The official GroupLens zip is downloaded
with urllib and its files are extracted straight into DIR (without the zip's top folder), so that
`data.root=DIR` works. ncf-ml-1m is the NCF authors' pre-split MovieLens-1M (three text files
from their GitHub repository, each written whole or not at all). For ml-100k only, when GroupLens cannot be reached, RecBole's copy is taken
from its PyPI wheel (`pip download --no-deps recbole==1.2.1`): `ml-100k.inter` and
`ml-100k.item`, the same 100,000 ratings, which `ML100KReader` reads too.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import uuid
import zipfile
from pathlib import Path, PurePosixPath

from flixrec.data.movielens import ML100KReader, ML1MReader, MLLatestSmallReader
from flixrec.data.ncf import NCFReader
from flixrec.errors import DataError, FlixrecError

log = logging.getLogger(__name__)

GROUPLENS = "https://files.grouplens.org/datasets/movielens/{name}.zip"
READERS = {"ml-100k": ML100KReader, "ml-1m": ML1MReader, "ml-latest-small": MLLatestSmallReader,
           "ncf-ml-1m": NCFReader}
# the authors' repository at a fixed commit; each file is checked against its git blob id there
NCF = ("https://raw.githubusercontent.com/hexiangnan/neural_collaborative_filtering/"
       "4aab159e81c44b062c091bdaed0ab54ac632371f/Data/{file}")
NCF_BLOBS = {"ml-1m.train.rating": "31ba384fd58dac8fbd09d2dfc6616431f3563ab5",
             "ml-1m.test.rating": "1b79e03c96710c3b0c35deb19155ef74f7965a02",
             "ml-1m.test.negative": "c82844fb99d021f94751a6f915a230a1e8b8da92"}
NCF_FILES = tuple(NCF_BLOBS)
RECBOLE = "recbole==1.2.1"
RECBOLE_FILES = ("recbole/dataset_example/ml-100k/ml-100k.inter",
                 "recbole/dataset_example/ml-100k/ml-100k.item")


def download(name: str, out: Path, force: bool = False, timeout: float = 60.0) -> Path:
    """Fetch data set `name` into directory `out` (created if needed) and return `out`.

    Does nothing when `out` already holds the data set's ratings file, unless `force`. Raises
    FlixrecError with a message saying what failed and what to do by hand.
    """
    if name not in READERS:
        raise FlixrecError(f"unknown data set {name!r}; choose one of {', '.join(READERS)}")
    out = Path(out)
    reader = READERS[name]()
    if not force and _present(reader, out):
        log.info("%s is already in %s", name, out)
        return out
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        _fetch(name, reader, out, timeout)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # leave no empty folder that looks like a started download
        raise
    if not _present(reader, out):
        raise FlixrecError(f"downloaded {name}, but {out} still lacks its ratings file")
    return out


def _fetch(name: str, reader, out: Path, timeout: float) -> None:
    if name == "ncf-ml-1m":
        for file in NCF_FILES:
            url = NCF.format(file=file)
            try:
                _fetch_file(url, out / file, timeout, NCF_BLOBS[file])
            except (OSError, http.client.HTTPException) as exc:  # a dropped connection: IncompleteRead
                raise FlixrecError(
                    f"could not download {url} ({getattr(exc, 'reason', exc)}). Put "
                    f"{', '.join(NCF_FILES)} from the Data/ folder of "
                    f"github.com/hexiangnan/neural_collaborative_filtering into {out} by hand.") from None
        return
    url = GROUPLENS.format(name=name)
    try:
        _fetch_grouplens(url, out, timeout)
    except (OSError, zipfile.BadZipFile) as exc:  # URLError, HTTPError and timeouts are OSErrors
        problem = f"could not download {url} ({getattr(exc, 'reason', exc)})"
        if name != "ml-100k":
            raise FlixrecError(f"{problem}. Download the zip by hand and unzip it so that "
                               f"{out / reader.layouts[0][0].file} exists.") from None
        log.warning("%s; falling back to RecBole's copy of ml-100k on PyPI (%s)", problem, RECBOLE)
        try:
            _fetch_recbole(out, timeout=max(timeout, 300.0))
        except (OSError, subprocess.SubprocessError, zipfile.BadZipFile, KeyError) as exc2:
            raise FlixrecError(f"{problem}, and the fallback `pip download {RECBOLE}` failed too: "
                               f"{exc2}. Put u.data (GroupLens) or ml-100k.inter (RecBole) into "
                               f"{out} by hand.") from None


def _present(reader, out: Path) -> bool:
    try:
        reader.files(out)
    except DataError:
        return False
    return not isinstance(reader, NCFReader) or (out / NCF_FILES[2]).is_file()


def _fetch_file(url: str, dest: Path, timeout: float, blob: str | None = None) -> None:
    """Download `url` to `dest`, which appears whole (a temporary name, then a rename), and only
    if its git blob id (`git hash-object`) is `blob`, when given."""
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
        if blob is not None and (got := git_blob_id(tmp)) != blob:
            raise OSError(f"the file differs from the authors' (git blob {got}, expected {blob})")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def git_blob_id(path: Path) -> str:
    """The id git gives the file's content: sha1 of "blob <size>\\0" followed by the bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_grouplens(url: str, out: Path, timeout: float) -> None:
    """Download the zip at `url` into a temporary folder inside `out`, extract it into `out`
    without its top folder."""
    with tempfile.TemporaryDirectory(dir=out, prefix=".download-") as tmp:
        archive = Path(tmp) / "data.zip"
        with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as f:
            shutil.copyfileobj(response, f, 1 << 20)
        extract_zip(archive, out)


def _fetch_recbole(out: Path, timeout: float) -> None:
    """`pip download` RecBole's wheel and copy its ml-100k atomic files into `out`."""
    with tempfile.TemporaryDirectory(prefix="flixrec-recbole-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", RECBOLE, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise OSError(f"pip exited with status {done.returncode}: {' / '.join(tail)}")
        wheels = sorted(Path(tmp).glob("recbole-*.whl"))
        if not wheels:
            raise OSError(f"pip download left no recbole wheel in {tmp}")
        extract_members(wheels[0], {m: PurePosixPath(m).name for m in RECBOLE_FILES}, out)


def extract_zip(archive: Path, out: Path) -> list[Path]:
    """Extract every file of `archive` into `out`, without the top folder all members share
    (GroupLens zips hold `ml-100k/...`). Returns the written paths."""
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
    parts = [PurePosixPath(n).parts for n in names]
    top = {p[0] for p in parts}
    strip = 1 if len(top) == 1 and all(len(p) > 1 for p in parts) else 0
    return extract_members(archive, {n: "/".join(p[strip:]) for n, p in zip(names, parts)}, out)


def extract_members(archive: Path, members: dict[str, str], out: Path) -> list[Path]:
    """Copy zip members (name -> relative target path) into `out`; each file appears whole
    (written to a temporary name, then renamed). Rejects targets that escape `out`."""
    written = []
    with zipfile.ZipFile(archive) as z:
        for member, rel in members.items():
            target = PurePosixPath(rel)
            if target.is_absolute() or ".." in target.parts or not target.parts:
                raise zipfile.BadZipFile(f"unsafe path {member!r} in {archive}")
            dest = out.joinpath(*target.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with z.open(member) as src, open(tmp, "wb") as dst:  # KeyError if missing
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Download a MovieLens data set (or the NCF authors' "
                                            "MovieLens-1M split) into DIR.")
    p.add_argument("name", choices=sorted(READERS))
    p.add_argument("dir", type=Path)
    p.add_argument("--force", action="store_true", help="download even if DIR already has the data")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per network operation")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = download(a.name, a.dir, force=a.force, timeout=a.timeout)
    except FlixrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    files = READERS[a.name]().files(out)
    print(f"{a.name} is in {out}: {', '.join(f.name for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

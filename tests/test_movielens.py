"""MovieLens readers parse each official format to exact values, name the file and line of bad
input, never write next to the data, and the downloader fails clearly or falls back to PyPI."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

from flixrec.data import download
from flixrec.data.movielens import ML1MReader, ML100KReader, MLLatestSmallReader
from flixrec.data.ratings import read_cached
from flixrec.errors import DataError, FlixrecError

SHARED = os.environ.get("FLIXREC_SHARED_DATA")
needs_shared = pytest.mark.skipif(not SHARED, reason="FLIXREC_SHARED_DATA not set: real MovieLens files not available")

U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t377\t1\t878887116\n22\t242\t5\t881250950\n"
U_ITEM = ("242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|0|0|1\n"
          "302|L.A. Confidential (1997)|01-Jan-1997||http://us.imdb.com/M/x|0|1|0\n"
          "377|Mis\u00e9rables, Les (1995)|01-Jan-1995||http://us.imdb.com/M/y|0|0|1\n")


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def triples(table) -> list[tuple]:
    return list(zip(table.user_ids[table.users].tolist(), table.item_ids[table.items].tolist(),
                    table.ratings.tolist(), table.times.tolist()))


def test_ml100k_grouplens_files(tmp_path: Path) -> None:
    write(tmp_path / "u.data", U_DATA)
    write(tmp_path / "u.item", U_ITEM, "latin-1")
    table = ML100KReader().parse(tmp_path)
    assert triples(table) == [(196, 242, 3, 881250949), (186, 302, 3, 891717742),
                              (196, 377, 1, 878887116), (22, 242, 5, 881250950)]
    assert table.users.tolist() == [2, 1, 2, 0] and table.user_ids.tolist() == [22, 186, 196]
    assert table.items.tolist() == [0, 1, 2, 0] and table.item_ids.tolist() == [242, 302, 377]
    assert (table.users.dtype, table.items.dtype, table.ratings.dtype, table.times.dtype) == (
        np.int32, np.int16, np.int8, np.int64)
    assert table.time_unit == "second"
    assert table.item_titles.tolist() == ["Kolya", "L.A. Confidential", "Mis\u00e9rables, Les"]
    assert table.item_years.tolist() == [1996.0, 1997.0, 1995.0]
    assert ML100KReader().files(tmp_path) == [tmp_path / "u.data", tmp_path / "u.item"]


def test_ml100k_recbole_files(tmp_path: Path) -> None:
    write(tmp_path / "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                      "196\t242\t3\t881250949\n186\t267\t4\t891717742\n")
    write(tmp_path / "ml-100k.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                     "242\tKolya\t1996\tComedy\n267\tunkonwn\tunkonwn\tunknown\n")
    table = ML100KReader().parse(tmp_path)
    assert triples(table) == [(196, 242, 3, 881250949), (186, 267, 4, 891717742)]
    assert table.item_titles.tolist() == ["Kolya", "unkonwn"]
    assert table.item_years[0] == 1996 and np.isnan(table.item_years[1])


def test_ml1m_files(tmp_path: Path) -> None:
    write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    write(tmp_path / "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                                   "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n", "latin-1")
    table = ML1MReader().parse(tmp_path)
    assert triples(table) == [(1, 1193, 5, 978300760), (1, 661, 3, 978302109), (2, 1193, 4, 978298413)]
    assert table.item_ids.tolist() == [661, 1193]
    assert table.item_titles.tolist() == ["James and the Giant Peach", "One Flew Over the Cuckoo's Nest"]
    assert table.item_years.tolist() == [1996.0, 1975.0]


def test_ml_latest_small_files_with_crlf_and_half_stars(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\r\n1,1,4.0,964982703\r\n"
                                    "1,3,0.5,964981247\r\n2,1,3.5,1445714835\r\n")
    write(tmp_path / "movies.csv", 'movieId,title,genres\r\n1,Toy Story (1995),Adventure\r\n'
                                   '3,"American President, The (1995)",Comedy|Drama\r\n4,Cosmos,(no genres listed)\r\n')
    table = MLLatestSmallReader().parse(tmp_path)
    assert triples(table) == [(1, 1, 4.0, 964982703), (1, 3, 0.5, 964981247), (2, 1, 3.5, 1445714835)]
    assert table.ratings.dtype == np.float32
    assert table.item_titles.tolist() == ["Toy Story", "American President, The"]


def test_titles_are_optional(tmp_path: Path) -> None:
    write(tmp_path / "u.data", U_DATA)
    table = ML100KReader().parse(tmp_path)
    assert table.item_titles is None and table.item_years is None
    assert ML100KReader().files(tmp_path) == [tmp_path / "u.data"]


@pytest.mark.parametrize("reader, name, text, line, words", [
    (ML100KReader, "u.data", "1\t2\t3\t4\n1\t3\tabc\t5\n", 2, "non-numeric"),
    (ML100KReader, "u.data", "1\t2\t3\t4\n\n1\t3\t3\n", 3, "missing"),
    (ML100KReader, "u.data", "1\t2\t3\t4\n1\t3\t3.5\t5\n", 2, "rating outside 1..5"),
    (ML100KReader, "u.data", "1\t2\t3\t4\n1\t3\t3\t5\t9\n", 2, "5 fields"),
    (ML100KReader, "u.data", "1\t2\t3\t4\n-1\t3\t3\t5\n", 2, "id"),
    (ML100KReader, "u.data", "1\t2\t3\t4\n1\t3\t3\t8812509490000000000000\n", 2, "before the year 3000"),
    (ML100KReader, "u.data", "1\t2\t3\t4\n1\t9007199254740993\t3\t5\n", 2, "2**53"),
    (ML1MReader, "ratings.dat", "1::2::3::4\n1:2::3::4\n", 2, "missing"),
    (ML1MReader, "ratings.dat", "1::2::3::4\n\n1::2::3:4:5\n", 3, "single ':'"),
    (MLLatestSmallReader, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.0,4\n1,2,5.5,4\n", 3, "0.5"),
    (MLLatestSmallReader, "ratings.csv", "userId,movieId,rating,timestamp\r\n1,2,3.0,4\r\n1,2,3.0,x\r\n", 3, "non-numeric"),
])
def test_bad_line_names_file_and_line(tmp_path: Path, reader, name, text, line, words) -> None:
    write(tmp_path / name, text)
    with pytest.raises(DataError) as err:
        reader().parse(tmp_path)
    assert err.value.path == str(tmp_path / name) and err.value.line == line
    assert words in err.value.problem and f"line {line}" in str(err.value)


def test_bad_titles_line_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "u.data", U_DATA)
    write(tmp_path / "u.item", U_ITEM + "\nno pipes here\n", "latin-1")
    with pytest.raises(DataError, match="no pipes here") as err:
        ML100KReader().parse(tmp_path)
    assert err.value.path == str(tmp_path / "u.item") and err.value.line == 5


def test_bad_header_and_missing_files(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "user,movie,rating,timestamp\n1,2,3.0,4\n")
    with pytest.raises(DataError, match="lacks column") as err:
        MLLatestSmallReader().parse(tmp_path)
    assert err.value.line == 1
    with pytest.raises(DataError, match=r"u\.data or ml-100k\.inter") as err:
        ML100KReader().files(tmp_path)
    assert err.value.path == str(tmp_path)
    with pytest.raises(DataError, match="ratings.dat"):
        ML1MReader().parse(tmp_path / "nowhere")


def test_skip_mode_drops_and_counts_bad_lines(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "1\t2\t3\t4\n1\tx\t3\t4\n\n2\t2\t4\t5\n1\t3\t3\t5\t9\n2\t3\t9\t1\n")
    table = ML100KReader(on_bad_lines="skip").parse(tmp_path)
    assert triples(table) == [(1, 2, 3, 4), (2, 2, 4, 5)]
    assert table.extra["skipped_lines"] == {"u.data": 3}


def test_parse_only_reads_and_cache_round_trips(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write(data / "u.data", U_DATA)
    write(data / "u.item", U_ITEM, "latin-1")
    before = sorted(p.name for p in data.iterdir())
    ML100KReader().parse(data)
    assert sorted(p.name for p in data.iterdir()) == before
    first = read_cached(ML100KReader(), data, tmp_path / "cache")
    again = read_cached(ML100KReader(), data, tmp_path / "cache")
    assert triples(again) == triples(first)
    assert again.item_titles.tolist() == first.item_titles.tolist()


@needs_shared
def test_real_ml100k() -> None:
    table = ML100KReader().parse(Path(SHARED) / "ml-100k")
    assert (len(table), table.num_users, table.num_items) == (100_000, 943, 1_682)
    assert triples(table)[0] == (196, 242, 3, 881250949)
    assert set(np.unique(table.ratings).tolist()) == {1, 2, 3, 4, 5}
    assert table.item_titles[0] == "Toy Story" and table.item_years[0] == 1995


@needs_shared
def test_real_ml_latest_small() -> None:
    table = MLLatestSmallReader().parse(Path(SHARED) / "ml-latest-small")
    assert (len(table), table.num_users, table.num_items) == (100_836, 610, 9_724)
    assert triples(table)[-1] == (610, 170875, 3.0, 1493846415)
    assert table.ratings.min() == 0.5 and table.ratings.max() == 5.0
    assert "American President, The" in set(table.item_titles.tolist())


# ----------------------------------------------------------------------------------------------
# download


def make_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    return path


def test_extract_zip_drops_the_top_folder(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "ml-1m.zip", {"ml-1m/ratings.dat": "1::2::3::4\n", "ml-1m/README": "x"})
    download.extract_zip(archive, tmp_path / "out")
    assert (tmp_path / "out" / "ratings.dat").read_text() == "1::2::3::4\n"
    evil = make_zip(tmp_path / "evil.zip", {"a/../../escape.txt": "x"})
    with pytest.raises(zipfile.BadZipFile):
        download.extract_zip(evil, tmp_path / "out2")
    assert not (tmp_path / "escape.txt").exists()


def offline(*args, **kwargs):
    raise urllib.error.URLError("Name or service not known")


def test_download_failure_is_one_clear_message(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    with pytest.raises(FlixrecError, match=r"files\.grouplens\.org/datasets/movielens/ml-1m\.zip.*by hand"):
        download.download("ml-1m", tmp_path / "ml1m")
    assert not (tmp_path / "ml1m").exists()
    assert download.main(["ml-latest-small", str(tmp_path / "small")]) == 1
    assert "ml-latest-small.zip" in capsys.readouterr().err


def test_ml100k_falls_back_to_the_recbole_wheel(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n"

    def fake_pip(cmd, **kwargs):  # what `pip download -d DIR recbole==1.2.1` leaves behind
        assert cmd[1:4] == ["-m", "pip", "download"] and download.RECBOLE in cmd
        make_zip(Path(cmd[cmd.index("-d") + 1]) / "recbole-1.2.1-py3-none-any.whl",
                 {download.RECBOLE_FILES[0]: inter, download.RECBOLE_FILES[1]: "item_id:token\tmovie_title:token_seq\n242\tKolya\n",
                  "recbole/__init__.py": ""})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(download.subprocess, "run", fake_pip)
    out = download.download("ml-100k", tmp_path / "ml100k")
    assert sorted(p.name for p in out.iterdir()) == ["ml-100k.inter", "ml-100k.item"]
    assert triples(ML100KReader().parse(out)) == [(196, 242, 3, 881250949)]


def test_ncf_files_are_fetched_whole_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    import io

    served = {"train.rating": b"0\t1\t5\t10\n", "test.rating": b"0\t2\t4\t20\n",
              "test.negative": b"(0,2)\t3\t4\n"}
    asked = []

    def fake(url, timeout):
        asked.append(url)
        for suffix, body in served.items():
            if url.endswith("ml-1m." + suffix):
                return io.BytesIO(body)
        raise urllib.error.URLError("not found")

    monkeypatch.setattr(download.urllib.request, "urlopen", fake)
    blobs = {}
    for suffix, body in served.items():  # the ids `git hash-object` gives these bodies
        (tmp_path / suffix).write_bytes(body)
        blobs["ml-1m." + suffix] = download.git_blob_id(tmp_path / suffix)
    # the real ids are those of the authors' files (the test files' are checked in test_ncf.py)
    assert set(download.NCF_BLOBS) == set(blobs)
    monkeypatch.setattr(download, "NCF_BLOBS", blobs)
    out = download.download("ncf-ml-1m", tmp_path / "ncf")
    assert sorted(p.name for p in out.iterdir()) == sorted(download.NCF_FILES)
    assert all("hexiangnan/neural_collaborative_filtering" in url for url in asked)
    assert (out / "ml-1m.test.negative").read_bytes() == served["test.negative"]
    download.download("ncf-ml-1m", out)  # already there: nothing fetched
    assert len(asked) == 3
    # a failed file leaves no partial file behind and names what to fetch by hand
    del served["test.negative"]
    with pytest.raises(FlixrecError, match="ml-1m.test.negative from the Data/ folder.*by hand"):
        download.download("ncf-ml-1m", tmp_path / "ncf2")
    assert sorted(p.name for p in (tmp_path / "ncf2").iterdir()) == ["ml-1m.test.rating", "ml-1m.train.rating"]
    # a file that is not the authors' (another git blob id) is refused and not kept
    served["test.negative"] = b"(0,2)\t3\t5\n"
    with pytest.raises(FlixrecError, match="differs from the authors'"):
        download.download("ncf-ml-1m", tmp_path / "ncf2")
    assert not (tmp_path / "ncf2" / "ml-1m.test.negative").exists()
    assert not list((tmp_path / "ncf2").glob(".*tmp*"))


@pytest.mark.skipif(not os.environ.get("FLIXREC_NETWORK_TESTS"), reason="FLIXREC_NETWORK_TESTS not set: no network tests")
def test_real_ml100k_download(tmp_path: Path) -> None:
    out = download.download("ml-100k", tmp_path / "ml100k", timeout=20)
    assert len(ML100KReader().parse(out)) == 100_000

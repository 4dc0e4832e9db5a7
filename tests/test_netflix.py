"""Netflix Prize readers: both layouts, exact values, titles, bad input, skip mode and the cache."""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from flixrec.data.netflix import NetflixReader, read_movie_titles, read_probe, read_qualifying
from flixrec.data.ratings import read_cached
from flixrec.errors import DataError

EPOCH = dt.date(1970, 1, 1)

# Two Kaggle files: sparse customer ids (up to 2,649,429), customer 6 rates two movies on one day,
# a leap day, and file 2 opening with its own header as the real files do.
FILE1 = """1:
1488844,3,2005-09-06
822109,5,2005-05-13
6,4,2005-05-13
2:
2649429,1,1999-11-11
6,2,2005-05-13
"""
FILE2 = """3:
822109,5,2004-02-29
7,1,2005-12-31
"""
# (customer, movie, rating, date) of every rating above, in file order
EXPECTED = [
    (1488844, 1, 3, dt.date(2005, 9, 6)), (822109, 1, 5, dt.date(2005, 5, 13)),
    (6, 1, 4, dt.date(2005, 5, 13)), (2649429, 2, 1, dt.date(1999, 11, 11)),
    (6, 2, 2, dt.date(2005, 5, 13)), (822109, 3, 5, dt.date(2004, 2, 29)),
    (7, 3, 1, dt.date(2005, 12, 31)),
]
TITLES = b"1,2003,Dinosaur Planet\n2,NULL,Caf\xe9, Society, and Others\n4,1999,Not Rated\n"


def write(path: Path, text: str | bytes, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text if isinstance(text, bytes) else text.replace("\n", newline).encode("latin-1")
    path.write_bytes(data)
    return path


def kaggle(root: Path, *texts: str, newline: str = "\n") -> Path:
    for i, text in enumerate(texts, 1):
        write(root / f"combined_data_{i}.txt", text, newline)
    return root


def original(root: Path, text: str) -> Path:
    """Split Kaggle-style text into training_set/mv_*.txt, one file per movie."""
    blocks = [b for b in text.replace("\n\n", "\n").split("\n") if b]
    movie, lines = None, {}
    for line in blocks:
        if line.endswith(":"):
            movie = int(line[:-1])
        lines.setdefault(movie, []).append(line)
    for movie, rows in lines.items():
        write(root / "training_set" / f"mv_{movie:07d}.txt", "\n".join(rows) + "\n")
    return root


def as_rows(table) -> list[tuple]:
    days = [EPOCH + dt.timedelta(days=int(d)) for d in table.times]
    return list(zip(table.user_ids[table.users].tolist(), table.item_ids[table.items].tolist(),
                    table.ratings.tolist(), days))


def assert_same(a, b) -> None:
    for name in ("users", "items", "ratings", "times", "user_ids", "item_ids"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


# ----------------------------------------------------------------------------------------------
# values and layouts


def test_kaggle_layout_exact_values_and_dtypes(tmp_path):
    table = NetflixReader().parse(kaggle(tmp_path, FILE1, FILE2))
    assert as_rows(table) == EXPECTED
    assert table.users.dtype == np.int32 and table.items.dtype == np.int16
    assert table.ratings.dtype == np.int8 and table.times.dtype == np.int32
    assert table.time_unit == "day"
    assert table.user_ids.tolist() == [6, 7, 822109, 1488844, 2649429]  # dense ids keep id order
    assert table.item_ids.tolist() == [1, 2, 3]
    assert table.users.tolist() == [3, 2, 0, 4, 0, 2, 1]
    assert table.item_titles is None and table.extra["layout"] == "kaggle"


def test_crlf_and_missing_final_newline_give_the_same_table(tmp_path):
    plain = NetflixReader().parse(kaggle(tmp_path / "lf", FILE1, FILE2))
    crlf = NetflixReader().parse(kaggle(tmp_path / "crlf", FILE1, FILE2, newline="\r\n"))
    unterminated = NetflixReader().parse(kaggle(tmp_path / "cut", FILE1, FILE2.rstrip("\n")))
    assert_same(plain, crlf)
    assert_same(plain, unterminated)


def test_original_layout_gives_the_same_table(tmp_path):
    kag = NetflixReader().parse(kaggle(tmp_path / "k", FILE1, FILE2))
    orig_root = original(tmp_path / "o", FILE1 + FILE2)
    assert len(list((orig_root / "training_set").iterdir())) == 3
    orig = NetflixReader().parse(orig_root)
    assert_same(kag, orig)
    assert orig.extra["layout"] == "original"


def test_tiny_chunks_carry_the_movie_across_chunk_boundaries(tmp_path):
    root = kaggle(tmp_path, FILE1, FILE2)
    whole = NetflixReader().parse(root)
    for chunk in (64, 65, 77, 100):
        assert_same(whole, NetflixReader(chunk_bytes=chunk, workers=2).parse(root))


def test_ratings_continue_the_previous_files_movie_in_kaggle_layout(tmp_path):
    # a combined file split mid-movie (e.g. with `split -l`) keeps the movie of the last header
    table = NetflixReader().parse(kaggle(tmp_path, "1:\n5,3,2005-01-01\n", "6,4,2005-01-02\n"))
    assert table.item_ids[table.items].tolist() == [1, 1]


def test_dates_match_calendar_arithmetic(tmp_path):
    days = [dt.date(1970, 1, 1), dt.date(1999, 12, 31), dt.date(2000, 2, 29), dt.date(1900, 3, 1),
            dt.date(1, 1, 1), dt.date(9999, 12, 31)] + \
        [dt.date(1998, 1, 1) + dt.timedelta(days=k) for k in range(0, 3000, 7)]
    lines = "".join(f"{k + 1},3,{d.isoformat()}\n" for k, d in enumerate(days))
    table = NetflixReader().parse(kaggle(tmp_path, "1:\n" + lines))
    assert table.times.tolist() == [(d - EPOCH).days for d in days]


def test_titles_are_aligned_with_dense_items(tmp_path):
    root = kaggle(tmp_path, FILE1, FILE2)
    write(root / "movie_titles.csv", TITLES)
    reader = NetflixReader()
    assert reader.files(root)[-1].name == "movie_titles.csv"  # so the cache key covers it
    table = reader.parse(root)
    assert table.item_titles.tolist() == ["Dinosaur Planet", "Caf\xe9, Society, and Others", None]
    assert table.item_years[0] == 2003 and np.isnan(table.item_years[1:]).all()


def test_read_movie_titles_latin1_commas_null_and_crlf(tmp_path):
    path = write(tmp_path / "movie_titles.csv", TITLES.replace(b"\n", b"\r\n"))
    df = read_movie_titles(path)
    assert df["movie_id"].tolist() == [1, 2, 4] and df["movie_id"].dtype == np.int64
    assert df["title"].tolist() == ["Dinosaur Planet", "Caf\xe9, Society, and Others", "Not Rated"]
    assert df["year"].dtype == np.float64 and np.isnan(df["year"][1]) and df["year"][2] == 1999


@pytest.mark.parametrize("content, line", [
    (b"1,2003,A\n2,20x3,B\n", 2), (b"1,2003,A\n2,2003\n", 2), (b"x,2003,A\n", 1),
    (b"1,2003,A\n\n2,2003,B\n", 2), (b"1,2003,A\n1,2004,B\n", 2),
])
def test_read_movie_titles_bad_line(tmp_path, content, line):
    with pytest.raises(DataError) as err:
        read_movie_titles(write(tmp_path / "movie_titles.csv", content))
    assert err.value.line == line and "movie_titles.csv" in str(err.value)


def test_probe_and_qualifying(tmp_path):
    probe = read_probe(write(tmp_path / "probe.txt", "1:\n30878\n2647871\n10:\n1952305\n", "\r\n"))
    assert probe.to_dict("list") == {"movie_id": [1, 1, 10], "customer_id": [30878, 2647871, 1952305]}
    qual = read_qualifying(write(tmp_path / "qualifying.txt", "1:\n1046323,2005-12-19\n2:\n7,2004-02-29"))
    assert qual["movie_id"].tolist() == [1, 2] and qual["customer_id"].tolist() == [1046323, 7]
    assert qual["day"].tolist() == [(dt.date(2005, 12, 19) - EPOCH).days,
                                    (dt.date(2004, 2, 29) - EPOCH).days]
    with pytest.raises(DataError, match=r"q2.txt, line 3: invalid date '2005-02-29'"):
        read_qualifying(write(tmp_path / "q2.txt", "1:\n5,2005-01-01\n6,2005-02-29\n"))
    with pytest.raises(DataError, match=r"probe.txt, line 3: malformed line '5,3'"):
        read_probe(write(tmp_path / "probe.txt", "1:\n4\n5,3\n"))


# ----------------------------------------------------------------------------------------------
# bad input


BAD = [  # (content of combined_data_1.txt, problem, line)
    ("1:\n5,3,2005-01-01\n6,7,2005-01-01\n", "rating 7 outside 1..5", 3),
    ("1:\n6,0,2005-01-01\n", "rating 0 outside 1..5", 2),
    ("1:\n6,x,2005-01-01\n", "invalid rating 'x'", 2),
    ("1:\n5,3,2005-01-01\n5,3,2005-13-01\n", "invalid date '2005-13-01'", 3),
    ("1:\n5,3,2005-01-32\n", "invalid date '2005-01-32'", 2),
    ("1:\n5,3,2005-02-29\n", "invalid date '2005-02-29'", 2),
    ("1:\n5,3,2005-0a-01\n", "invalid date '2005-0a-01'", 2),
    ("1:\n5,3,05-01-01\n", "invalid date '05-01-01'", 2),
    ("5,3,2005-01-01\n1:\n", "rating line before any movie header 'M:'", 1),
    ("1:\n5,3\n", "malformed line '5,3'", 2),
    ("1:\n5,3,2005-01-01,x\n", "malformed line", 2),
    ("1:\nab,3,2005-01-01\n", "malformed line 'ab,3,2005-01-01'", 2),
    ("1:\n5,3,2005-01-01\n\n6,3,2005-01-01\n", "malformed line ''", 3),
    ("1:\n5,3,2005-01-01\n6,3,2005-0", "file seems truncated", 3),
    ("1:\n5,3,2005-01-01\n1a:\n6,3,2005-01-01\n", "malformed line '1a:'", 3),
    ("1:\n1234567890,3,2005-01-01\n", "malformed line", 2),
    ("1:\n5 ,3,2005-01-01\n", "malformed line", 2),
    ("1:\n5,3,2005-01-01\r\r\n", "invalid date '2005-01-01\\r'", 2),
    ("1:\n" + "9" * 300 + "\n6,3,2005-01-01\n", "malformed line", 2),
    ("1:\n5,3,2005-01-01\n6,9,2005-99-99\n7,3,2005-13-01\n", "rating 9 outside 1..5", 3),  # first wins
]


@pytest.mark.parametrize("text, problem, line", BAD)
@pytest.mark.parametrize("chunk", [1 << 20, 64])
def test_bad_line_names_file_line_and_problem(tmp_path, text, problem, line, chunk):
    root = kaggle(tmp_path, text)
    with pytest.raises(DataError) as err:
        NetflixReader(chunk_bytes=chunk).parse(root)
    assert err.value.line == line and problem in err.value.problem
    assert str(err.value).startswith(f"{root / 'combined_data_1.txt'}, line {line}: ")


def test_error_in_second_file_counts_lines_in_that_file(tmp_path):
    root = kaggle(tmp_path, FILE1, "3:\n5,3,2005-01-01\n5,6,2005-01-01\n")
    with pytest.raises(DataError, match=r"combined_data_2.txt, line 3: rating 6 outside 1..5"):
        NetflixReader(chunk_bytes=64).parse(root)


def test_original_layout_needs_a_header_in_every_file(tmp_path):
    root = original(tmp_path, FILE1)
    write(root / "training_set" / "mv_0000003.txt", "7,3,2005-01-01\n")
    with pytest.raises(DataError, match=r"mv_0000003.txt, line 1: rating line before any movie header"):
        NetflixReader().parse(root)


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p, lambda p: write(p / "f.txt", "")])
def test_no_rating_files_names_both_layouts(tmp_path, make):
    root = make(tmp_path)
    write(tmp_path / "training_set" / "readme.txt", "not a rating file")
    with pytest.raises(DataError) as err:
        NetflixReader().files(root)
    assert "combined_data_1.txt" in str(err.value) and "training_set/mv_0000001.txt" in str(err.value)


def test_headers_only_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no ratings found"):
        NetflixReader().parse(kaggle(tmp_path, "1:\n2:\n"))


def test_skip_mode_counts_bad_lines_per_file(tmp_path, caplog):
    root = kaggle(tmp_path, "9,3,2005-01-01\n1:\n5,3,2005-01-01\n5,8,2005-01-01\n\n6,3,2005-13-01\n",
                  "2:\n7,1,2005-01-01\n2x:\n8,1,2005-01-01\n9,1,2005-01-01\n3:\n9,2,2005-01-02")
    with caplog.at_level(logging.WARNING, logger="flixrec.data.netflix"):
        table = NetflixReader("skip", chunk_bytes=64).parse(root)
    # file 1: orphan, rating 8, empty line, month 13; file 2: a bad header and the 2 lines under it
    assert table.extra["skipped_lines"] == {"combined_data_1.txt": 4, "combined_data_2.txt": 3}
    assert as_rows(table) == [(5, 1, 3, dt.date(2005, 1, 1)), (7, 2, 1, dt.date(2005, 1, 1)),
                              (9, 3, 2, dt.date(2005, 1, 2))]
    assert "combined_data_1.txt: skipped 4 bad line(s)" in caplog.text
    assert "combined_data_2.txt: skipped 3 bad line(s)" in caplog.text


def test_reader_contract():
    reader = NetflixReader("skip")
    assert reader.name == "netflix" and isinstance(reader.version, int)
    assert reader.options() == {"on_bad_lines": "skip"}
    with pytest.raises(ValueError):
        NetflixReader("ignore")


# ----------------------------------------------------------------------------------------------
# cache


def test_cache_is_reused_and_rebuilt_when_a_source_changes(tmp_path, monkeypatch):
    root = kaggle(tmp_path / "data", FILE1, FILE2)
    write(root / "movie_titles.csv", TITLES)
    cache = tmp_path / "cache"
    first = read_cached(NetflixReader(), root, cache)

    def no_parse(self, root):
        raise AssertionError("parsed again although the cache is valid")

    monkeypatch.setattr(NetflixReader, "parse", no_parse)
    again = read_cached(NetflixReader(), root, cache)
    assert_same(first, again)
    assert again.item_titles.tolist() == first.item_titles.tolist()
    monkeypatch.undo()

    write(root / "combined_data_2.txt", FILE2 + "8,2,2005-01-01\n")
    rebuilt = read_cached(NetflixReader(), root, cache)
    assert len(rebuilt) == len(first) + 1
    write(root / "movie_titles.csv", TITLES.replace(b"Dinosaur", b"Dino"))
    assert read_cached(NetflixReader(), root, cache).item_titles[0] == "Dino Planet"


def test_failed_parse_leaves_no_cache(tmp_path):
    root = kaggle(tmp_path / "data", FILE1, "3:\n5,3,2005-13-01\n")
    cache = tmp_path / "cache"
    with pytest.raises(DataError):
        read_cached(NetflixReader(), root, cache)
    assert not [p for p in cache.iterdir() if not p.name.endswith(".lock")]


# ----------------------------------------------------------------------------------------------
# the real titles file


def test_real_movie_titles():
    shared = os.environ.get("FLIXREC_SHARED_DATA")
    if not shared:
        pytest.skip("FLIXREC_SHARED_DATA not set: real Netflix titles not available")
    path = Path(shared) / "netflix" / "movie_titles.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found: real Netflix titles not available")
    df = read_movie_titles(path)
    assert len(df) == 17_770 and df["movie_id"].tolist() == list(range(1, 17_771))
    assert sorted(df.loc[df["year"].isna(), "movie_id"]) == [4388, 4794, 7241, 10782, 15918, 16678, 17667]
    assert df["title"].str.contains(",").sum() == 336
    titles = df.set_index("movie_id")["title"]
    assert titles[6483] == "Smokey Joe's Caf\xe9"
    assert titles[16272] == "Crouching Tiger, Hidden Dragon"
    assert titles[1] == "Dinosaur Planet" and df["year"].iloc[0] == 2003

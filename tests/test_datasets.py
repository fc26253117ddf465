from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import polars as pl
import pytest
import yaml

from featrec.datasets import card_dirs, load_card, load_tables, read_table
from featrec.errors import DataError
from featrec.spec import DataSpec
from tests.conftest import real_data_dir

RATINGS = "1::10::5::100\n1::11::3::200\n2::10::4::150\n"
MOVIES = "10::Caf\xe9 Society (2016)::Comedy|Drama\n11::Heat (1995)::Action\n"


def sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@pytest.fixture
def toy_card(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A card for a two-file dataset in the ML-1M layout ('::', latin-1)."""
    files = {"ratings.dat": RATINGS.encode(), "movies.dat": MOVIES.encode("latin-1")}
    card = {
        "name": "toy",
        "title": "Toy",
        "homepage": "https://example.org",
        "license": "test data",
        "source": {"url": (tmp_path / "toy.zip").as_uri(), "prefix": "toy/"},
        "files": {name: sha(payload) for name, payload in files.items()},
        "tables": {
            "interactions": {
                "file": "ratings.dat",
                "separator": "::",
                "columns": {"user_id": "int", "item_id": "int", "rating": "int",
                            "timestamp": "int"},
            },
            "items": {
                "file": "movies.dat",
                "separator": "::",
                "encoding": "latin-1",
                "columns": {"item_id": "int", "title": "str", "genre_text": "str"},
                "derive": {
                    "year": {"extract": "title", "pattern": r"\((\d{4})\)\s*$"},
                    "genres": {"split": "genre_text", "by": "|"},
                },
            },
        },
    }  # fmt: skip
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path, files


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)


@pytest.mark.parametrize("name", ["ml-100k", "ml-1m"])
def test_shipped_cards_are_complete(name: str) -> None:
    card = load_card(name)
    assert card.source.url.startswith("https://files.grouplens.org/")
    for alternatives in (card.tables.interactions, card.tables.users, card.tables.items):
        for source in alternatives:
            assert source.file in card.files
    for mirror in card.mirrors:
        assert set(mirror.files) <= set(card.files) and mirror.sha256


def test_cards_ship_inside_the_package_tree() -> None:
    assert any((d / "ml-1m.yaml").is_file() for d in card_dirs())


def test_local_copy_is_read_and_mapped(
    toy_card: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card_path, files = toy_card
    (tmp_path / "data" / "toy").mkdir(parents=True)
    for name, payload in files.items():
        (tmp_path / "data" / "toy" / name).write_bytes(payload)
    monkeypatch.setenv("FEATREC_DATA_DIR", str(tmp_path / "data"))
    tables = load_tables(DataSpec(dataset=str(card_path)))
    assert tables.interactions.columns == ["user_id", "item_id", "timestamp", "rating"]
    assert tables.interactions.height == 3 and tables.users is None
    items = tables.items.to_dicts()
    assert items[0] == {"item_id": 10, "title": "Café Society (2016)", "year": 2016,
                        "genres": ["Comedy", "Drama"]}  # fmt: skip


def test_checksum_mismatch_is_an_error(
    toy_card: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card_path, files = toy_card
    folder = tmp_path / "data" / "toy"
    folder.mkdir(parents=True)
    (folder / "movies.dat").write_bytes(files["movies.dat"])
    (folder / "ratings.dat").write_bytes(files["ratings.dat"][:-5])  # truncated
    monkeypatch.setenv("FEATREC_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(DataError, match=r"ratings\.dat: sha256 mismatch") as caught:
        load_tables(DataSpec(dataset=str(card_path)))
    assert "truncated, corrupt" in str(caught.value)


def test_missing_files_offline_is_an_error(toy_card: tuple[Path, dict]) -> None:
    with pytest.raises(
        DataError, match=r"not found .* FEATREC_OFFLINE is set; set FEATREC_DATA_DIR"
    ):
        load_tables(DataSpec(dataset=str(toy_card[0])))


def test_unknown_card_lists_known_ones() -> None:
    with pytest.raises(DataError, match=r"no dataset card 'ml-20m' \(known: .*ml-100k, ml-1m"):
        load_card("ml-20m")


def test_download_verifies_then_caches(
    toy_card: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card_path, files = toy_card
    write_zip(tmp_path / "toy.zip", {f"toy/{n}": p for n, p in files.items()})
    monkeypatch.delenv("FEATREC_OFFLINE")
    tables = load_tables(DataSpec(dataset=str(card_path)))
    assert tables.interactions.height == 3
    cache = Path(os.environ["FEATREC_CACHE"]) / "datasets" / "toy"
    assert sorted(p.name for p in cache.iterdir()) == ["movies.dat", "ratings.dat"]
    (tmp_path / "toy.zip").unlink()  # second load: from the cache, no download
    assert load_tables(DataSpec(dataset=str(card_path))).items.height == 2


def test_corrupt_download_leaves_nothing_behind(
    toy_card: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card_path, files = toy_card
    write_zip(
        tmp_path / "toy.zip",
        {"toy/ratings.dat": files["ratings.dat"], "toy/movies.dat": b"tampered"},
    )
    monkeypatch.delenv("FEATREC_OFFLINE")
    with pytest.raises(DataError, match=r"could not be downloaded: .*movies\.dat: sha256 mismatch"):
        load_tables(DataSpec(dataset=str(card_path)))
    cache = Path(os.environ["FEATREC_CACHE"]) / "datasets" / "toy"
    assert list(cache.iterdir()) == []  # not even the file that verified


def test_mirror_is_tried_when_the_source_fails(
    toy_card: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card_path, files = toy_card
    card = yaml.safe_load(card_path.read_text())
    wheel = tmp_path / "mirror.whl"
    header_and_tabs = b"u:token\ti:token\tr:float\tt:float\n" + files["ratings.dat"].replace(
        b"::", b"\t"
    )
    write_zip(wheel, {"pkg/toy.inter": header_and_tabs, "pkg/movies": files["movies.dat"]})
    card["mirrors"] = [
        {
            "url": wheel.as_uri(),
            "sha256": sha(wheel.read_bytes()),
            "files": {
                "ratings.dat": {
                    "member": "pkg/toy.inter",
                    "skip_lines": 1,
                    "replace": ["\t", "::"],
                },
                "movies.dat": {"member": "pkg/movies"},
            },
        }
    ]  # the source zip does not exist: the mirror must serve
    card_path.write_text(yaml.safe_dump(card, sort_keys=False))
    monkeypatch.delenv("FEATREC_OFFLINE")
    tables = load_tables(DataSpec(dataset=str(card_path)))
    assert tables.interactions["item_id"].to_list() == [10, 11, 10]


def test_no_source_reachable_names_every_url(
    toy_card: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEATREC_OFFLINE")
    with pytest.raises(DataError, match=r"could not be downloaded: file://.*toy.zip: .*by hand"):
        load_tables(DataSpec(dataset=str(toy_card[0])))


# --- users' own files ----------------------------------------------------------------------


def test_own_csv_with_column_mapping_and_datetimes(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("who,what,when\na,x,2020-01-01T00:00:10\nb,y,2020-01-01T00:01:00\n")
    data = DataSpec(interactions=path, columns={"user": "who", "item": "what", "time": "when"})
    frame = load_tables(data).interactions
    assert frame["user_id"].to_list() == ["a", "b"]
    assert frame["timestamp"].to_list() == [1577836810, 1577836860]
    assert "who" in frame.columns  # the original names stay usable by features


def test_mapped_column_missing(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user,item,t\n1,2,3\n")
    with pytest.raises(DataError, match=r"data.columns.time: column 'timestamp' not in the "
                       r"interactions table .*; columns: user, item, t"):  # fmt: skip
        load_tables(DataSpec(interactions=path, columns={"user": "user", "item": "item"}))


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    frame = pl.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "timestamp": [5, 6]})
    frame.write_parquet(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    with pytest.raises(
        DataError, match=r"data.interactions: .*events.parquet: cannot read as parquet"
    ):
        read_table(path, "interactions")


def test_unknown_file_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown file type '.xlsx'"):
        read_table(tmp_path / "events.xlsx", "interactions")


def test_sequence_and_json_layouts_read_as_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card whose interactions are one line per user (items oldest first, no time) and
    whose items are a JSON object of attribute lists: the position stands for the time."""
    folder = tmp_path / "data" / "tiny-seq"
    folder.mkdir(parents=True)
    files = {"seq.txt": b"7 3 5 3\n2 5\n9 4 3 8 1\n", "attrs.json": b'{"3": [1, 2], "5": [2]}'}
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    sums = {n: hashlib.sha256(p).hexdigest() for n, p in files.items()}
    card = {
        "name": "tiny-seq", "title": "t", "homepage": "h", "license": "l",
        "source": {"url": "https://example.invalid/x.zip"}, "files": sums,
        "tables": {
            "interactions": [{"file": "seq.txt", "layout": "sequences", "separator": " ",
                              "columns": {"user_id": "int", "item_id": "int"}}],
            "items": [{"file": "attrs.json", "layout": "json_lists",
                       "columns": {"item_id": "int", "attributes": "int"}}],
        },
    }  # fmt: skip
    card_path = tmp_path / "tiny-seq.yaml"
    card_path.write_text(yaml.safe_dump(card))
    monkeypatch.setenv("FEATREC_DATA_DIR", str(tmp_path / "data"))
    tables = load_tables(DataSpec(dataset=str(card_path)))
    rows = tables.interactions.sort("user_id", "timestamp").rows()
    assert rows == [(2, 5, 0), (7, 3, 0), (7, 5, 1), (7, 3, 2), (9, 4, 0), (9, 3, 1),
                    (9, 8, 2), (9, 1, 3)]  # fmt: skip
    assert tables.items.sort("item_id").rows() == [(3, [1, 2]), (5, [2])]
    card["tables"]["interactions"][0]["columns"] = {"u": "int", "i": "int"}
    card_path.write_text(yaml.safe_dump(card))
    with pytest.raises(DataError, match="sequences layout needs columns user_id and item_id"):
        load_tables(DataSpec(dataset=str(card_path)))
    (folder / "seq.txt").write_bytes(b"7 3 x\n")  # a sum mismatch comes first
    with pytest.raises(DataError, match="sha256"):
        load_tables(DataSpec(dataset=str(card_path)))


@pytest.mark.real_data
def test_sports_card_reads_the_s3rec_files() -> None:
    real_data_dir("s3rec-sports")
    tables = load_tables(DataSpec(dataset="s3rec-sports"))
    events = tables.interactions
    assert (events.height, events["user_id"].n_unique(), events["item_id"].n_unique()) == (
        296_337,
        35_598,
        18_357,
    )  # the counts the S3-Rec files are published with
    first = events.filter(pl.col("user_id") == 1).sort("timestamp")["item_id"].to_list()
    assert first == [1, 2, 3, 4, 5, 6, 7, 8]  # line 1 of Sports_and_Outdoors.txt, in order
    assert tables.items["attributes"].list.len().mean() > 5

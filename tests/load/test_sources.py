"""Load inputs: every supported file form becomes the exact units and errors, in load order."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from fhir_server.load import sources
from fhir_server.load.sources import LoadError, LoadUnit, iter_units, total_bytes
from fhir_server.model.jsonio import JsonDecimal

LARGE_ARCHIVE = (
    Path(__file__).resolve().parents[2].parent
    / "shared" / "data" / "synthea" / "large-100-patients" / "synthea-r4-100-patients-bundles.tar.gz"
)


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid}


def bundle(kind: str, *resources: dict[str, Any]) -> dict[str, Any]:
    entries = []
    for r in resources:
        entry: dict[str, Any] = {"fullUrl": f"urn:uuid:{r['id']}", "resource": r}
        if kind in ("transaction", "batch"):
            entry["request"] = {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def write(path: Path, data: bytes | str | dict[str, Any]) -> Path:
    if isinstance(data, dict):
        data = json.dumps(data)
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") and not path.name.endswith(".tar.gz") else raw)
    return path


def ndjson(*resources: dict[str, Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in resources)


def make_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar.gz holding ``members`` in exactly this order (tar keeps insertion order)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def units(items: list[LoadUnit | LoadError]) -> list[LoadUnit]:
    return [item for item in items if isinstance(item, LoadUnit)]


def shape(items: list[LoadUnit | LoadError]) -> list[tuple[str, ...]]:
    """Items without their bytes and entries: (source, kind) or ("error", source, entry, message)."""
    return [
        (item.source, item.kind) if isinstance(item, LoadUnit)
        else ("error", item.source, str(item.entry), item.message)
        for item in items
    ]


# --- single files --------------------------------------------------------------------------------


def test_transaction_bundle_is_one_unit_of_its_entries(tmp_path: Path) -> None:
    doc = bundle("transaction", patient("p1"), patient("p2"))
    path = write(tmp_path / "t.json", doc)
    assert list(iter_units([path])) == [
        LoadUnit(str(path), "transaction", doc["entry"], 0, None, path.stat().st_size)
    ]


def test_batch_bundle_gzipped_counts_compressed_bytes(tmp_path: Path) -> None:
    doc = bundle("batch", patient("p1"))
    path = write(tmp_path / "b.json.gz", doc)
    assert list(iter_units([str(path)])) == [LoadUnit(str(path), "batch", doc["entry"], bytes=path.stat().st_size)]


@pytest.mark.parametrize("kind", ["collection", "searchset"])
def test_collection_and_searchset_bundles_give_their_entries(tmp_path: Path, kind: str) -> None:
    doc = bundle(kind, patient("p1"), patient("p2"))
    path = write(tmp_path / "c.json", doc)
    [unit] = list(iter_units([path]))
    assert isinstance(unit, LoadUnit)
    assert (unit.kind, unit.entries) == ("collection", doc["entry"])


@pytest.mark.parametrize(
    "doc",
    [patient("p1"), {"resourceType": "Bundle", "type": "document", "entry": [{"resource": patient("p1")}]}],
    ids=["Patient", "document Bundle"],
)
def test_any_other_resource_is_a_collection_of_itself(tmp_path: Path, doc: dict[str, Any]) -> None:
    path = write(tmp_path / "r.json", doc)
    assert list(iter_units([path])) == [LoadUnit(str(path), "collection", [{"resource": doc}], bytes=path.stat().st_size)]


def test_decimals_keep_their_literal(tmp_path: Path) -> None:
    path = write(tmp_path / "o.json", '{"resourceType": "Observation", "valueQuantity": {"value": 1.50}}')
    [unit] = units(list(iter_units([path])))
    value = unit.entries[0]["resource"]["valueQuantity"]["value"]
    assert isinstance(value, JsonDecimal) and value == "1.50"


@pytest.mark.parametrize(
    ("content", "entry", "message"),
    [
        ('{"resourceType": ', None, "invalid JSON: Expecting value at line 1 column 18"),
        ('{"resourceType": "Patient",\n "id": }', None, "invalid JSON: Expecting value at line 2 column 8"),
        (b"\xff", None, "invalid JSON: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
        ("[1, 2]", None, "not a FHIR resource (expected a JSON object with a resourceType)"),
        ('{"id": "x"}', None, "not a FHIR resource (expected a JSON object with a resourceType)"),
        ('{"resourceType": "Bundle", "type": "batch", "entry": {}}', None, "Bundle.entry is not an array"),
        ('{"resourceType": "Bundle", "type": "transaction", "entry": [{}, 3]}', 1, "Bundle entry is not an object"),
    ],
)
def test_bad_documents_are_errors(tmp_path: Path, content: str | bytes, entry: int | None, message: str) -> None:
    path = write(tmp_path / "bad.json", content)
    assert list(iter_units([path])) == [LoadError(str(path), entry, message, path.stat().st_size)]


def test_an_error_does_not_stop_the_files_after_it(tmp_path: Path) -> None:
    bad = write(tmp_path / "1.json", "{")
    corrupt = write(tmp_path / "2.json.gz", b"")
    corrupt.write_bytes(b"not gzip at all")
    good = write(tmp_path / "3.json", patient("p1"))
    assert shape(list(iter_units([bad, corrupt, tmp_path / "missing.json", good]))) == [
        ("error", str(bad), "None", "invalid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        ("error", str(corrupt), "None", "cannot read: Not a gzipped file (b'no')"),
        ("error", str(tmp_path / "missing.json"), "None", "cannot read: No such file or directory"),
        (str(good), "collection"),
    ]


def test_a_named_file_of_unknown_type_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.txt", "hello")
    assert list(iter_units([path])) == [
        LoadError(
            str(path), None,
            "unsupported file type (expected .json, .json.gz, .ndjson, .ndjson.gz, .tar.gz, .tgz)",
            5,
        )
    ]


def test_files_are_read_lazily_in_the_order_given(tmp_path: Path) -> None:
    first = write(tmp_path / "z.json", patient("first"))
    second = write(tmp_path / "a.json", patient("old"))
    items = iter_units([first, second])
    assert next(items).source == str(first)
    write(second, patient("new"))  # the second file has not been opened yet
    unit = next(items)
    assert isinstance(unit, LoadUnit) and unit.entries == [{"resource": patient("new")}]


def test_ndjson_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ndjson_batch"):
        list(iter_units([], ndjson_batch=0))


# --- NDJSON --------------------------------------------------------------------------------------

NDJSON_LINES = (
    ndjson(patient("p1"), patient("p2"))  # lines 1-2
    + "\n"  # 3: blank
    + '{"resourceType": "Patient", "id": \n'  # 4: broken
    + ndjson(patient("p3"))  # 5
    + '  \t\n'  # 6: blank
    + '["not", "a resource"]\n'  # 7
    + ndjson(patient("p4"), patient("p5"))  # 8-9
    + "\n"  # 10: blank tail
)


@pytest.mark.parametrize("name", ["o.ndjson", "o.ndjson.gz"])
def test_ndjson_batches_lines_and_reports_bad_ones(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, NDJSON_LINES)
    items = list(iter_units([path], ndjson_batch=2))
    s = str(path)
    assert [(i.source, i.entry, i.message) if isinstance(i, LoadError) else i for i in items] == [
        LoadUnit(f"{s} (lines 1-2)", "collection", [{"resource": patient("p1")}, {"resource": patient("p2")}],
                 1, [1, 2], items[0].bytes, file=s),
        (s, 4, "invalid JSON: Expecting value at column 35"),
        (s, 7, "not a FHIR resource (expected a JSON object with a resourceType)"),
        LoadUnit(f"{s} (lines 5-8)", "collection", [{"resource": patient("p3")}, {"resource": patient("p4")}],
                 5, [5, 8], items[3].bytes, file=s),
        LoadUnit(f"{s} (line 9)", "collection", [{"resource": patient("p5")}], 9, [9], items[4].bytes, file=s),
    ]
    # Every input byte is accounted for, in step with the reading (no item carries it all).
    assert sum(item.bytes for item in items) == path.stat().st_size
    if name == "o.ndjson":
        assert [item.bytes for item in items] == [
            len(ndjson(patient("p1"), patient("p2"))),
            len('\n{"resourceType": "Patient", "id": \n'),
            len(ndjson(patient("p3")) + '  \t\n["not", "a resource"]\n'),
            len(ndjson(patient("p4"))),
            len(ndjson(patient("p5")) + "\n"),
        ]


def test_ndjson_in_one_batch_when_it_fits(tmp_path: Path) -> None:
    path = write(tmp_path / "o.ndjson", ndjson(patient("p1"), patient("p2"), patient("p3")))
    assert shape(list(iter_units([path]))) == [(f"{path} (lines 1-3)", "collection")]


def test_bytes_of_an_input_without_items_go_to_the_next_item(tmp_path: Path) -> None:
    empty = write(tmp_path / "a.ndjson", "\n\n\n")
    good = write(tmp_path / "b.json", patient("p1"))
    [unit] = list(iter_units([tmp_path]))
    assert unit.bytes == 3 + good.stat().st_size == total_bytes([tmp_path])
    assert empty.exists()


# --- folders -------------------------------------------------------------------------------------


def test_folders_are_walked_recursively_shared_information_first(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write(root / "b.json", patient("b"))
    write(root / "a.ndjson", ndjson(patient("a")))
    write(root / "practitionerInformation1.json", bundle("transaction", {"resourceType": "Practitioner", "id": "d"}))
    write(root / "hospitalInformation1.json.gz", bundle("transaction", {"resourceType": "Organization", "id": "o"}))
    write(root / "A_upper.json", patient("A"))
    write(root / "notes.txt", "skipped")
    write(root / ".hidden.json", "{ not even JSON")
    write(root / ".git" / "x.json", "{ not even JSON")
    write(root / "sub" / "c.json", patient("c"))
    write(root / "sub" / "hospitalInformation2.json", patient("h2"))
    write(root / "sub" / "deeper" / "d.json", patient("d"))
    make_tar(root / "z.tgz", [("x.json", json.dumps(patient("x")).encode())])
    s = str(root)
    assert shape(list(iter_units([root]))) == [
        (f"{s}/hospitalInformation1.json.gz", "transaction"),
        (f"{s}/practitionerInformation1.json", "transaction"),
        (f"{s}/A_upper.json", "collection"),
        (f"{s}/a.ndjson (line 1)", "collection"),
        (f"{s}/b.json", "collection"),
        (f"{s}/sub/hospitalInformation2.json", "collection"),
        (f"{s}/sub/c.json", "collection"),
        (f"{s}/sub/deeper/d.json", "collection"),
        (f"{s}/z.tgz:x.json", "collection"),
    ]


def test_bytes_add_up_to_total_bytes(tmp_path: Path) -> None:
    write(tmp_path / "t.json", bundle("transaction", patient("p1")))
    write(tmp_path / "b.json.gz", bundle("batch", patient("p2")))
    write(tmp_path / "o.ndjson.gz", ndjson(*(patient(f"n{i}") for i in range(50))))
    write(tmp_path / "bad.json", "{")
    write(tmp_path / "skipped.txt", "not counted")
    make_tar(tmp_path / "a.tar.gz", [("x.ndjson", ndjson(*(patient(f"x{i}") for i in range(30))).encode())])
    items = list(iter_units([tmp_path], ndjson_batch=7))
    expected = sum(p.stat().st_size for p in tmp_path.iterdir() if p.suffix != ".txt")
    assert total_bytes([tmp_path]) == expected
    assert sum(item.bytes for item in items) == expected
    assert all(item.bytes >= 0 for item in items)


def test_a_symbolic_link_loop_is_reported_not_followed(tmp_path: Path) -> None:
    write(tmp_path / "sub" / "a.json", patient("a"))
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    assert shape(list(iter_units([tmp_path]))) == [
        (f"{tmp_path}/sub/a.json", "collection"),
        ("error", f"{tmp_path}/sub/loop", "None", "symbolic link back to an enclosing folder, not followed"),
    ]


# --- archives ------------------------------------------------------------------------------------

ARCHIVE_MEMBERS = [
    ("fhir/b.json", json.dumps(bundle("transaction", patient("b"))).encode()),
    ("fhir/practitionerInformation9.json", json.dumps(bundle("transaction", patient("pr"))).encode()),
    ("fhir/a.ndjson.gz", gzip.compress(ndjson(patient("a1"), patient("a2"), patient("a3")).encode())),
    ("fhir/hospitalInformation9.json", json.dumps(bundle("transaction", patient("ho"))).encode()),
    ("README.txt", b"not loaded"),
    ("fhir/._b.json", b"\x00\x05\x16\x07 AppleDouble litter"),
    ("./top.ndjson", ndjson(patient("t")).encode()),
    ("fhir/inner.tar.gz", b"nested"),
    ("fhir/broken.json", b'{"resourceType"'),
    ("fhir/sub/c.json", json.dumps(patient("c")).encode()),
]


def expected_archive_items(archive: Path) -> list[tuple[str, ...]]:
    a = str(archive)
    return [
        (f"{a}:fhir/hospitalInformation9.json", "transaction"),
        (f"{a}:fhir/practitionerInformation9.json", "transaction"),
        (f"{a}:fhir/a.ndjson.gz (lines 1-2)", "collection"),
        (f"{a}:fhir/a.ndjson.gz (line 3)", "collection"),
        (f"{a}:fhir/b.json", "transaction"),
        ("error", f"{a}:fhir/broken.json", "None", "invalid JSON: Expecting ':' delimiter at line 1 column 16"),
        ("error", f"{a}:fhir/inner.tar.gz", "None", "archives inside archives are not supported"),
        (f"{a}:fhir/sub/c.json", "collection"),
        (f"{a}:./top.ndjson (line 1)", "collection"),
    ]


@pytest.mark.parametrize("spooled", [False, True], ids=["read in place", "spooled"])
def test_archive_members_are_read_like_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spooled: bool
) -> None:
    spools = []
    real_temporary_file = sources.tempfile.TemporaryFile

    def counting_temporary_file(*args: Any, **kwargs: Any) -> Any:
        spools.append(1)
        return real_temporary_file(*args, **kwargs)

    monkeypatch.setattr(sources.tempfile, "TemporaryFile", counting_temporary_file)
    monkeypatch.setattr(sources, "_MAX_REWINDS", 0 if spooled else 100)
    archive = make_tar(tmp_path / "set.tgz", ARCHIVE_MEMBERS)
    items = list(iter_units([archive], ndjson_batch=2))
    assert shape(items) == expected_archive_items(archive)
    assert len(spools) == (1 if spooled else 0)
    assert sum(item.bytes for item in items) == archive.stat().st_size == total_bytes([archive])
    [first] = units(items[:1])
    assert first.entries == bundle("transaction", patient("ho"))["entry"]


def test_an_archive_in_directory_order_is_spooled_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spools = []
    real_temporary_file = sources.tempfile.TemporaryFile

    def counting_temporary_file(*args: Any, **kwargs: Any) -> Any:
        spools.append(1)
        return real_temporary_file(*args, **kwargs)

    monkeypatch.setattr(sources.tempfile, "TemporaryFile", counting_temporary_file)
    names = [f"p{i:02d}.json" for i in range(10)]
    shuffled = make_tar(tmp_path / "shuffled.tar.gz", [(n, json.dumps(patient(n)).encode()) for n in reversed(names)])
    in_order = make_tar(tmp_path / "sorted.tar.gz", [(n, json.dumps(patient(n)).encode()) for n in names])
    assert [u.source for u in units(list(iter_units([shuffled])))] == [f"{shuffled}:{n}" for n in names]
    assert len(spools) == 1
    assert [u.source for u in units(list(iter_units([in_order])))] == [f"{in_order}:{n}" for n in names]
    assert len(spools) == 1


def test_a_broken_archive_is_an_error(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "set.tar.gz", ARCHIVE_MEMBERS)
    data = archive.read_bytes()
    truncated = write(tmp_path / "truncated.tgz", data[: len(data) // 2])
    not_gzip = write(tmp_path / "plain.tgz", b"plain text")
    after = write(tmp_path / "after.json", patient("p"))
    items = list(iter_units([truncated, not_gzip, after]))
    assert shape(items) == [
        ("error", str(truncated), "None", "cannot read: Compressed file ended before the end-of-stream marker was reached"),
        ("error", str(not_gzip), "None", "cannot read: not a gzip file"),
        (str(after), "collection"),
    ]
    assert sum(item.bytes for item in items) == total_bytes([truncated, not_gzip, after])


def test_the_shared_synthea_archive_loads_whole_and_in_order() -> None:
    if not LARGE_ARCHIVE.is_file():
        pytest.skip(f"shared Synthea data not present at {LARGE_ARCHIVE} (optional ../shared folder)")
    expected_entries = 0
    with tarfile.open(LARGE_ARCHIVE) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.endswith(".json"):
                extracted = archive.extractfile(member)
                assert extracted is not None
                doc = json.load(extracted)
                expected_entries += len(doc["entry"]) if doc["resourceType"] == "Bundle" else 1
    items = list(iter_units([LARGE_ARCHIVE]))
    loaded = units(items)
    assert len(items) == len(loaded) == 103
    names = [unit.source.rsplit("/", 1)[-1] for unit in loaded]
    assert names[0].startswith("hospitalInformation") and names[1].startswith("practitionerInformation")
    assert names[2:] == sorted(names[2:])
    assert [unit.kind for unit in loaded].count("transaction") == 102
    assert sum(len(unit.entries) for unit in loaded) == expected_entries == 38971
    assert sum(unit.bytes for unit in loaded) == LARGE_ARCHIVE.stat().st_size

"""pipelines.manifest: schema, atomic Parquet write with metadata, validating read, path safety."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.errors import ManifestError
from pipelines.manifest import (
    METADATA_KEY,
    REQUIRED_COLUMNS,
    SCHEMA_VERSION,
    SCORE_COLUMNS,
    clip_path,
    manifest_hash,
    read_manifest,
    write_manifest,
)


def base_manifest(n: int = 3) -> pd.DataFrame:
    """A manifest with the required columns only (ints where floats are declared, to test casting)."""
    return pd.DataFrame(
        {
            "clip_id": [f"clip{i:03d}" for i in range(n)],
            "video_path": [f"clips/clip{i:03d}.mp4" for i in range(n)],
            "fps": [25] * n,
            "n_frames": [75] * n,
            "width": [128] * n,
            "height": [128] * n,
            "audio_sr": [16000] * n,
            "duration_s": [3.0] * n,
            "source": ["demo"] * n,
            "start_s": [0.0] * n,
            "end_s": [3] * n,
        }
    )


def test_round_trip_keeps_values_dtypes_and_metadata(tmp_path):
    df = base_manifest()
    df["tier"] = ["A", "B", "reject"]
    df["sync_conf"] = [1.5, np.nan, 3.0]
    path = tmp_path / "manifest.parquet"
    write_manifest(df, path, producer="fada test", metadata={"thresholds": {"sync_conf": 2.0}, "scorers": ["sync"]})
    back = read_manifest(path, required=[*REQUIRED_COLUMNS, "tier", "sync_conf"])
    assert list(back["clip_id"]) == ["clip000", "clip001", "clip002"]
    assert list(back["tier"]) == ["A", "B", "reject"]
    assert np.isnan(back["sync_conf"][1]) and back["sync_conf"][2] == 3.0
    for name, dtype in {**REQUIRED_COLUMNS, "tier": SCORE_COLUMNS["tier"]}.items():
        assert str(back[name].dtype) == dtype, name
    assert back.attrs["fada"] == {
        "schema_version": SCHEMA_VERSION,
        "producer": "fada test",
        "thresholds": {"sync_conf": 2.0},
        "scorers": ["sync"],
    }
    raw = pq.read_schema(path).metadata[METADATA_KEY]
    assert json.loads(raw)["producer"] == "fada test"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.parquet"]  # no temp file left


def test_missing_columns_name_the_producing_command(tmp_path):
    path = tmp_path / "manifest.parquet"
    write_manifest(base_manifest(), path, producer="fada test")
    with pytest.raises(ManifestError, match=r"missing column 'sync_conf'; it is written by `fada curate`"):
        read_manifest(path, required=[*REQUIRED_COLUMNS, "sync_conf"])
    with pytest.raises(ManifestError, match=r"missing column 'tier'.*fada curate.*fada demo-data"):
        read_manifest(path, required=["tier"])
    # a base column missing from a file written by something else
    pq.write_table(pa.Table.from_pandas(base_manifest().drop(columns=["fps"])), path)
    with pytest.raises(ManifestError, match=r"missing column 'fps'.*fada demo-data"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="missing column 'source'"):
        write_manifest(base_manifest().drop(columns=["source"]), tmp_path / "m2.parquet", producer="x")


def test_duplicate_ids_bad_tiers_and_bad_dtypes_are_rejected(tmp_path):
    path = tmp_path / "manifest.parquet"
    df = base_manifest()
    df.loc[2, "clip_id"] = "clip000"
    with pytest.raises(ManifestError, match="duplicate clip_id 'clip000'"):
        write_manifest(df, path, producer="x")
    df = base_manifest()
    df["tier"] = ["A", "C", "B"]
    with pytest.raises(ManifestError, match=r"unknown tier value\(s\) \['C'\]"):
        write_manifest(df, path, producer="x")
    df = base_manifest()
    df["fps"] = ["fast"] * 3
    with pytest.raises(ManifestError, match="column 'fps'.*float64"):
        write_manifest(df, path, producer="x")
    assert not path.exists()


@pytest.mark.parametrize("bad", ["/data/clip.mp4", "../clip.mp4", "clips/../../clip.mp4", "C:\\clips\\a.mp4", ""])
def test_paths_escaping_the_folder_are_rejected(tmp_path, bad):
    with pytest.raises(ManifestError, match="absolute|escapes|empty"):
        clip_path(tmp_path / "manifest.parquet", bad)
    df = base_manifest()
    df.loc[1, "video_path"] = bad
    with pytest.raises(ManifestError):
        write_manifest(df, tmp_path / "manifest.parquet", producer="x")
    # also on read, for a file written by something else
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "foreign.parquet")
    with pytest.raises(ManifestError):
        read_manifest(tmp_path / "foreign.parquet")


def test_clip_path_resolves_relative_to_manifest_folder(tmp_path):
    manifest = tmp_path / "data" / "manifest.parquet"
    assert clip_path(manifest, "clips/a.mp4") == tmp_path / "data" / "clips" / "a.mp4"
    assert clip_path(manifest, "./clips/../b.mp4") == tmp_path / "data" / "clips" / ".." / "b.mp4"


def test_missing_corrupt_and_newer_manifests(tmp_path):
    with pytest.raises(ManifestError, match=r"manifest not found: .*nope.parquet; make one with `fada demo-data"):
        read_manifest(tmp_path / "nope.parquet")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not parquet at all" * 20)
    with pytest.raises(ManifestError, match="cannot read manifest .*corrupt.parquet"):
        read_manifest(corrupt)
    newer = tmp_path / "newer.parquet"
    write_manifest(base_manifest(), newer, producer="x")
    table = pq.read_table(newer)
    meta = {**table.schema.metadata, METADATA_KEY: json.dumps({"schema_version": "99"}).encode()}
    pq.write_table(table.replace_schema_metadata(meta), newer)
    with pytest.raises(ManifestError, match="schema version 99 is newer"):
        read_manifest(newer)


def test_manifest_hash_tracks_content(tmp_path):
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_manifest(base_manifest(), first, producer="x")
    write_manifest(base_manifest(), second, producer="x")
    assert manifest_hash(first) == manifest_hash(second)  # deterministic bytes
    assert len(manifest_hash(first)) == 64
    write_manifest(base_manifest(4), second, producer="x")  # atomic replace of an existing file
    assert manifest_hash(first) != manifest_hash(second)
    assert len(read_manifest(second)) == 4

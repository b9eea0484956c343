"""Bundle.open's verification cache: a bundle that passed is not hashed again; a change is.

The bundle here is a tagger-only manifest over files of random bytes: Bundle.open reads the
manifest and hashes the files but loads no graph, so no export (and no torch) is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from mner.runtime import bundle as bundle_module
from mner.runtime.bundle import Bundle, BundleError, VerificationCache, verification_cache_dir
from mner.runtime.tags import TagScheme

SCHEME = TagScheme(("LOC", "MISC", "ORG", "PER"))


def write_bundle(folder: Path, graph_bytes: int = 200_000) -> Path:
    """A consistent tagger-only bundle whose graph is random bytes (never loaded here)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    (folder / "tagger.onnx").write_bytes(rng.bytes(graph_bytes))
    t = SCHEME.num_tags
    np.savez(folder / "crf.npz", start=np.zeros(t, np.float32), end=np.zeros(t, np.float32),
             transitions=np.zeros((t, t), np.float32))  # fmt: skip
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "tokenizer.json").write_text("{}")
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size,
                                                "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip
    tensor = lambda name, dtype, shape: {"name": name, "dtype": dtype, "shape": shape}  # noqa: E731
    manifest = {
        "format": "mner-bundle", "format_version": 1, "model": {"config": {}}, "tags": SCHEME.to_json(),
        "crf": {"file": "crf.npz", "arrays": {"start": [t], "end": [t], "transitions": [t, t]}},
        "tokenizer": {"dir": "tokenizer", "files": ["tokenizer.json"], "max_length": 64},
        "preprocessing": {"text": {"splitter": "tweet"}, "image": {}},
        "stages": {"tagger": {
            "inputs": [tensor("input_ids", "int64", ["batch", "sequence"])],
            "outputs": [tensor("emissions", "float32", ["batch", "sequence", t])],
            "dynamic_axes": {"batch": {"min": 1, "max": 64}, "sequence": {"min": 1, "max": 128}},
            "graphs": {"fp32": {"file": "tagger.onnx"}}}},
        "engines": {}, "files": files,
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def hashed(monkeypatch):
    """The names of the files Bundle.open hashes, in order."""
    calls: list[str] = []
    real = bundle_module.sha256_file

    def counting(path: Path) -> str:
        calls.append(path.name)
        return real(path)

    monkeypatch.setattr(bundle_module, "sha256_file", counting)
    return calls


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    # Files written by the test are seconds old at most: without this every one would be
    # "racy" (too recent to remember); test_a_file_changed_moments_ago_is_not_remembered keeps it.
    monkeypatch.setattr(bundle_module, "RACY_SECONDS", 0.0)
    folder = tmp_path / "cache"
    monkeypatch.setenv("MNER_CACHE_DIR", str(folder))
    return folder


def flip_a_byte_keeping_size_and_mtime(path: Path, offset: int = 1000) -> None:
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns


def test_a_verified_bundle_is_not_hashed_again(tmp_path, cache_dir, hashed):
    bundle = write_bundle(tmp_path / "bundle")
    Bundle.open(bundle)
    assert sorted(hashed) == ["crf.npz", "tagger.onnx", "tokenizer.json"]
    assert len(list((cache_dir / "verified").glob("*.json"))) == 1
    hashed.clear()
    opened = Bundle.open(bundle)
    assert hashed == [] and opened.scheme == SCHEME
    Bundle.open(bundle, verify_cache=False)  # the cache off: every file hashed
    assert sorted(hashed) == ["crf.npz", "tagger.onnx", "tokenizer.json"]


def test_a_modified_file_with_a_new_mtime_is_hashed_and_refused(tmp_path, cache_dir, hashed):
    bundle = write_bundle(tmp_path / "bundle")
    Bundle.open(bundle)
    hashed.clear()
    graph = bundle / "tagger.onnx"
    data = bytearray(graph.read_bytes())
    data[1000] ^= 1
    graph.write_bytes(bytes(data))
    os.utime(graph, ns=(graph.stat().st_atime_ns, graph.stat().st_mtime_ns + 5_000_000_000))
    with pytest.raises(BundleError, match="tagger.onnx: sha256"):
        Bundle.open(bundle)
    assert hashed == ["tagger.onnx"]  # only the changed file was read again


def test_a_same_size_edit_with_its_mtime_restored_is_caught_by_ctime(tmp_path, cache_dir, hashed):
    # The case an (size, mtime) key misses: ctime, which no user call can set back, shows it.
    bundle = write_bundle(tmp_path / "bundle")
    Bundle.open(bundle)
    hashed.clear()
    flip_a_byte_keeping_size_and_mtime(bundle / "tagger.onnx")
    with pytest.raises(BundleError, match="tagger.onnx: sha256"):
        Bundle.open(bundle)
    assert hashed == ["tagger.onnx"]


def test_what_the_cache_cannot_see_is_trusted_as_documented(tmp_path, cache_dir, hashed):
    # An edit the kernel does not show in size, mtime, ctime, inode or device (a raw write to
    # the disk) passes: simulated by recording the edited file's identity with the old hash.
    bundle = write_bundle(tmp_path / "bundle")
    Bundle.open(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    flip_a_byte_keeping_size_and_mtime(bundle / "tagger.onnx")
    cache = VerificationCache.load(cache_dir, bundle)
    now = (bundle / "tagger.onnx").stat()
    cache.record("tagger.onnx", now, now, manifest["files"]["tagger.onnx"]["sha256"])
    cache.save()
    hashed.clear()
    Bundle.open(bundle)
    assert hashed == []
    assert "not against someone who can write your disk" in " ".join(VerificationCache.__doc__.split())
    with pytest.raises(BundleError, match="tagger.onnx: sha256"):
        Bundle.open(bundle, verify_cache=False)


def test_a_copied_bundle_and_a_changed_manifest_hash_again(tmp_path, cache_dir, hashed):
    bundle = write_bundle(tmp_path / "bundle")
    Bundle.open(bundle)
    hashed.clear()
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["crf.npz"]["sha256"] = "0" * 64  # a manifest that now expects other bytes
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="crf.npz: sha256"):
        Bundle.open(bundle)
    assert hashed == ["crf.npz"]


def test_verify_false_hashes_nothing_and_writes_no_cache(tmp_path, cache_dir, hashed):
    bundle = write_bundle(tmp_path / "bundle")
    Bundle.open(bundle, verify=False)
    assert hashed == [] and not cache_dir.exists()


def test_a_file_changed_moments_ago_is_not_remembered(tmp_path, cache_dir, hashed, monkeypatch):
    monkeypatch.setattr(bundle_module, "RACY_SECONDS", 3600.0)  # every file here is "just written"
    bundle = write_bundle(tmp_path / "bundle")
    Bundle.open(bundle)
    hashed.clear()
    Bundle.open(bundle)
    assert len(hashed) == 3  # hashed again: a same-tick rewrite could have kept its timestamps


def test_an_unwritable_cache_folder_falls_back_to_hashing(tmp_path, cache_dir, hashed, monkeypatch):
    bundle = write_bundle(tmp_path / "bundle")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("MNER_CACHE_DIR", str(blocked))
    Bundle.open(bundle)
    Bundle.open(bundle)
    assert len(hashed) == 6  # nothing remembered, nothing raised
    if os.geteuid() != 0:  # root writes through permission bits
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        readonly.chmod(stat.S_IRUSR | stat.S_IXUSR)
        monkeypatch.setenv("MNER_CACHE_DIR", str(readonly))
        hashed.clear()
        Bundle.open(bundle)
        Bundle.open(bundle)
        assert len(hashed) == 6


def test_a_missing_or_corrupt_cache_file_is_ignored_and_rewritten(tmp_path, cache_dir, hashed):
    bundle = write_bundle(tmp_path / "bundle")
    Bundle.open(bundle)
    (cache_file,) = (cache_dir / "verified").glob("*.json")
    for garbage in (b"{not json", b"\xff\xfe", b"[]", json.dumps({"format": 1, "bundle": str(bundle.resolve()),
                                                                   "files": {"tagger.onnx": "x"}}).encode()):  # fmt: skip
        cache_file.write_bytes(garbage)
        hashed.clear()
        Bundle.open(bundle)
        assert len(hashed) == 3
    hashed.clear()
    Bundle.open(bundle)  # the last open wrote a good cache again
    assert hashed == []
    cache_file.unlink()
    Bundle.open(bundle)
    assert len(hashed) == 3


def test_entries_of_bundles_gone_from_disk_are_dropped(tmp_path, cache_dir):
    first, second = write_bundle(tmp_path / "one"), write_bundle(tmp_path / "two")
    Bundle.open(first)
    Bundle.open(second)
    assert len(list((cache_dir / "verified").glob("*.json"))) == 2
    (first / "manifest.json").unlink()
    third = write_bundle(tmp_path / "three")
    Bundle.open(third)  # writing the cache sweeps out the entry of the bundle that is gone
    kept = {json.loads(p.read_text())["bundle"] for p in (cache_dir / "verified").glob("*.json")}
    assert kept == {str(second.resolve()), str(third.resolve())}


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MNER_CACHE_DIR", str(tmp_path / "mine"))
    assert verification_cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("MNER_CACHE_DIR", "")
    assert verification_cache_dir() is None  # set but empty: no cache, every open hashes
    monkeypatch.delenv("MNER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert verification_cache_dir() == tmp_path / "xdg" / "mner"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid per the XDG spec: ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert verification_cache_dir() == tmp_path / "home" / ".cache" / "mner"


def test_an_empty_cache_setting_hashes_every_open(tmp_path, monkeypatch, hashed):
    monkeypatch.setenv("MNER_CACHE_DIR", "")
    bundle = write_bundle(tmp_path / "bundle")
    Bundle.open(bundle)
    Bundle.open(bundle)
    assert len(hashed) == 6


def test_an_explicit_cache_folder_is_used(tmp_path, monkeypatch, hashed):
    monkeypatch.setattr(bundle_module, "RACY_SECONDS", 0.0)
    monkeypatch.setenv("MNER_CACHE_DIR", "")  # the argument wins over the environment
    bundle = write_bundle(tmp_path / "bundle")
    Bundle.open(bundle, verify_cache=tmp_path / "explicit")
    Bundle.open(bundle, verify_cache=tmp_path / "explicit")
    assert len(hashed) == 3 and list((tmp_path / "explicit" / "verified").glob("*.json"))

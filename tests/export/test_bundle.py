"""The bundle: manifest round trip, hashes, tampering, atomic writes, and parity failures that write nothing."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from mner.export import stages as stages_module
from mner.export.bundle import (
    MANIFEST_FORMAT_VERSION,
    BundleError,
    BundleWriter,
    check_destination,
    read_manifest,
    sha256_file,
    verify_bundle,
)
from mner.export.parity import ParityError
from mner.export.pipeline import export_bundle
from mner.runtime.decode import CRFParameters
from mner.runtime.tags import TagScheme
from mner.runtime.text import TextEncoder
from mner.train.checkpoint import load_checkpoint
from mner.train.model import ModelConfig


def linked_copy(bundle, destination):
    """A copy sharing the big files' inodes; tests replace (never edit in place) what they tamper with."""
    shutil.copytree(bundle, destination, copy_function=os.link)
    return destination


def replace_file(path, data: bytes):
    path.unlink()
    path.write_bytes(data)


def test_manifest_round_trip(bundle, small_ckpt):
    manifest = verify_bundle(bundle)
    checkpoint = load_checkpoint(small_ckpt)
    assert manifest["format"] == "mner-bundle" and manifest["format_version"] == MANIFEST_FORMAT_VERSION
    assert ModelConfig.from_dict(manifest["model"]["config"]) == checkpoint.config
    assert manifest["model"]["checkpoint"] == {"file": "best.pt", "sha256": sha256_file(small_ckpt),
                                               "random_weights": {"preset": "tiny", "seed": 0}}  # fmt: skip
    assert TagScheme.from_json(manifest["tags"]) == checkpoint.scheme
    crf = CRFParameters.from_npz(bundle / manifest["crf"]["file"])
    expected = checkpoint.crf_parameters()
    assert all(np.array_equal(getattr(crf, k), getattr(expected, k)) for k in ("start", "end", "transitions"))
    encoder = TextEncoder.load(bundle / manifest["tokenizer"]["dir"])
    words = ["Kawhi", "Leonard", "visits", "Toronto"]
    assert np.array_equal(encoder.encode(words).input_ids, checkpoint.text_encoder.encode(words).input_ids)
    assert manifest["tokenizer"]["files"] == ["aug_vocab.json", "text_encoder.json", "tokenizer.json"]
    # every file hashed, nothing else on disk
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert all(manifest["files"][name]["sha256"] == sha256_file(bundle / name) for name in on_disk)


def test_manifest_records_versions_preprocessing_and_weights(bundle):
    manifest = read_manifest(bundle)
    versions = manifest["versions"]
    assert versions["torch"] and versions["onnx"] and versions["onnxruntime"] and versions["tensorrt"] is None
    assert manifest["preprocessing"]["text"] == {"splitter": "tweet"}  # mner-train's default: TWITTER-format data
    image = manifest["preprocessing"]["image"]
    assert image["vision_size"] == 224 and image["detector_size"] == 128 and len(image["mean"]) == 3
    assert manifest["preprocessing"]["objects"] | {"labels": None} == {
        "score_threshold": 0.5, "iou_threshold": 0.5, "max_objects": 5, "top_k": 100, "labels": None}  # fmt: skip
    assert manifest["stages"]["vision"]["weights"] == {"arch": "resnet50", "source": "random", "seed": 0, "identity": "resnet50:random-0"}
    assert manifest["stages"]["detector"]["weights"]["source"] == "random"
    assert manifest["stages"]["tagger"]["weights"]["sha256"] == manifest["model"]["checkpoint"]["sha256"]
    assert manifest["stages"]["detector"]["size"] == 128 and manifest["stages"]["detector"]["top_k"] == 100
    assert manifest["engines"] == {}
    assert "mask" in manifest["stages"]["tagger"]["graphs"]["fp16"]["kept_fp32"]["fp32_nodes_by_reason"]


def test_tampered_missing_and_unlisted_files_are_named(bundle, tmp_path):
    copy = linked_copy(bundle, tmp_path / "copy")
    data = (copy / "crf.npz").read_bytes()
    replace_file(copy / "crf.npz", data[:-1] + bytes([data[-1] ^ 0xFF]))
    (copy / "tokenizer" / "aug_vocab.json").unlink()
    (copy / "notes.txt").write_text("hello")
    with pytest.raises(BundleError) as error:
        verify_bundle(copy)
    message = str(error.value)
    assert "crf.npz: sha256" in message  # same size, one byte changed
    assert "tokenizer/aug_vocab.json: missing" in message
    assert "notes.txt: not listed" in message
    verify_bundle(bundle)  # the original is untouched


def test_tampered_graph_is_detected(bundle, tmp_path):
    copy = linked_copy(bundle, tmp_path / "copy")
    data = bytearray((copy / "tagger.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    replace_file(copy / "tagger.onnx", bytes(data))
    with pytest.raises(BundleError, match="tagger.onnx: sha256 [0-9a-f]{64}, the manifest says"):
        verify_bundle(copy)


def test_manifest_format_checks(tmp_path):
    with pytest.raises(BundleError, match="manifest.json is missing"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(["a list"]))
    with pytest.raises(BundleError, match="not an mner bundle manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "mner-bundle", "format_version": 99}))
    with pytest.raises(BundleError, match="format_version 99, this runtime reads 1; upgrade mner"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "mner-bundle", "format_version": 1}))
    with pytest.raises(BundleError, match="no 'files' table"):
        verify_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "mner-bundle", "format_version": 1,
                                                        "files": {"../etc/passwd": {"sha256": "", "bytes": 0}}}))  # fmt: skip
    with pytest.raises(BundleError, match="not a relative path inside the bundle"):
        verify_bundle(tmp_path)


MINIMAL = {"crf": {"file": "crf.npz"}, "tokenizer": {"dir": "tokenizer", "files": []}, "stages": {}, "engines": {}}


def test_writer_renames_into_place_only_on_commit(tmp_path):
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="interrupted"):
        with BundleWriter(out) as writer:
            (writer.dir / "crf.npz").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with BundleWriter(out) as writer:
        (writer.dir / "crf.npz").write_bytes(b"x")
        writer.commit(dict(MINIMAL))
    assert verify_bundle(out)["files"] == {"crf.npz": {"sha256": sha256_file(out / "crf.npz"), "bytes": 1}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # the usual mode, not mkdtemp's private 0700


def test_destination_checks(tmp_path):
    (tmp_path / "existing").mkdir()
    (tmp_path / "file").write_text("")
    with pytest.raises(BundleError, match="already exists; pass --overwrite"):
        check_destination(tmp_path / "existing", overwrite=False)
    check_destination(tmp_path / "existing", overwrite=True)
    with pytest.raises(BundleError, match="is a file that already exists"):
        check_destination(tmp_path / "file", overwrite=True)
    with pytest.raises(BundleError, match="is not a directory"):
        check_destination(tmp_path / "file" / "bundle", overwrite=False)


def test_overwrite_replaces_only_after_success(tmp_path):
    out = tmp_path / "b"
    with BundleWriter(out) as writer:
        (writer.dir / "crf.npz").write_bytes(b"old")
        writer.commit(dict(MINIMAL))
    with pytest.raises(RuntimeError):
        with BundleWriter(out, overwrite=True) as writer:
            (writer.dir / "crf.npz").write_bytes(b"new")
            raise RuntimeError("interrupted")
    assert (out / "crf.npz").read_bytes() == b"old"
    with BundleWriter(out, overwrite=True) as writer:
        (writer.dir / "crf.npz").write_bytes(b"new")
        writer.commit(dict(MINIMAL))
    assert (out / "crf.npz").read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_parity_failure_lists_every_output_and_writes_nothing(small_ckpt, tmp_path, monkeypatch, reuse_exported_graphs):
    # the tagger's graph is the session's (full_bundle's): the subject is the parity checks that follow the export
    strict = dataclasses.replace(stages_module.STAGES["tagger"], tolerance={"emissions": 1e-12})
    monkeypatch.setitem(stages_module.STAGES, "tagger", strict)
    out = tmp_path / "bundle"
    with pytest.raises(ParityError) as error:
        export_bundle(ckpt=small_ckpt, out=out, stages="tagger")
    message = str(error.value)
    assert "11 of 12 parity checks failed" in message  # 11 sizes of emissions; the tag check passed
    for batch in (1, 3, 17):
        for sequence in (5, 64, 100):
            assert f"tagger [fp32] batch={batch} sequence={sequence} grid_cells=49: emissions max_rel" in message
    assert "tagger [fp32] batch=17 sequence=64 grid_cells=1: emissions max_rel" in message
    assert "limit <= 1e-12" in message
    assert list(tmp_path.iterdir()) == []  # no bundle, no partial directory

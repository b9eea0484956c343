"""mner-tag --ray (runtime/ray_tag.py) on a local Ray with 2 CPUs, started once for the module: the same records
as single-process mner-tag on the TWITTER-2017 test posts, finished shards skipped on a rerun, a bad row as that
row's error, and an actor killed mid-run (kill -9) restarted by Ray with no row lost or written twice."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray", reason="mner-tag --ray needs Ray: pip install 'mner[ray]'")
pytest.importorskip("pyarrow", reason="mner-tag --ray needs pyarrow: pip install 'mner[ray]'")

from mner.runtime.cli import tag_command  # noqa: E402
from mner.runtime.conll import read_conll  # noqa: E402
from mner.runtime.pipeline import Pipeline  # noqa: E402
from mner.runtime.ray_tag import SIDECAR_NAME, parquet_schema, tag_ray  # noqa: E402
from mner.runtime.tagfile import tag_jsonl  # noqa: E402

TWITTER2017 = Path(__file__).resolve().parents[3] / "shared" / "data" / "twitter2017"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)  # a 1 x 1 PNG
SHARDS = 4
WORKER = "MapBatches(_ShardTagger)"  # in the process title of each actor of the pool

pytestmark = pytest.mark.skipif(not (TWITTER2017 / "test.txt").is_file(),
                                reason=f"TWITTER-2017 test split not found at {TWITTER2017 / 'test.txt'}")  # fmt: skip


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (ray.init takes seconds): tag_ray uses it and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory, exported_once):
    """The TWITTER-2017 test posts in 3 JSONL shards and 1 Parquet shard, a bad row and pictures among them, and
    single-process mner-tag's records of each shard (tag_jsonl with one Pipeline)."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    root = tmp_path_factory.mktemp("archive")
    posts = [{"id": f"t{i}", "text": " ".join(post.words)} for i, post in enumerate(read_conll(TWITTER2017 / "test.txt"))]
    posts[3]["image"] = "pic.png"  # a path under --images (the input folder)
    posts[5]["image_base64"] = base64.b64encode(PNG).decode()
    (root / "in").mkdir()
    (root / "in" / "pic.png").write_bytes(PNG)
    lines = {f"part-{k}.jsonl": [json.dumps(post).encode() for post in posts[k::SHARDS]] for k in range(SHARDS - 1)}
    lines["part-0.jsonl"].insert(2, b'{"id": "broken", "text": ')  # a bad row: that row's error record
    for name, shard in lines.items():
        (root / "in" / name).write_bytes(b"\n".join(shard) + b"\n")
    rows = posts[SHARDS - 1 :: SHARDS]
    pq.write_table(pa.Table.from_pylist(rows), root / "in" / "part-3.parquet")
    (root / "ref").mkdir()
    (root / "ref" / "part-3.parquet.jsonl").write_bytes(b"".join(json.dumps(row).encode() + b"\n" for row in rows))
    expected = {}
    with Pipeline.from_bundle(exported_once.bundle) as pipeline:
        for name in [*lines, "part-3.parquet"]:
            source = root / "in" / name if name.endswith(".jsonl") else root / "ref" / f"{name}.jsonl"
            tag_jsonl(pipeline, source, root / "ref" / f"{name}.out", images=root / "in", progress=False)
            expected[name] = (root / "ref" / f"{name}.out").read_text().splitlines()
    return root, expected


def records(output: Path) -> dict[str, list[str]]:
    """Output shard records by input shard name (the name before the bundle's sha)."""
    return {path.name.rsplit(".", 2)[0]: path.read_text().splitlines() for path in sorted(output.glob("*.jsonl"))}


@pytest.fixture(scope="module")
def first_run(local_ray, archive, exported_once):
    root, _ = archive
    started = time.perf_counter()
    summary = tag_ray(exported_once.bundle, root / "in", root / "out", actors=2, batch_size=8)
    return summary, time.perf_counter() - started


def test_the_union_of_the_shards_equals_single_process_mner_tag(archive, first_run):
    root, expected = archive
    summary, _ = first_run
    assert records(root / "out") == expected  # per shard, in input order: equal as sets too
    posts = sum(len(shard) for shard in expected.values())
    assert (summary.shards, summary.skipped_shards, summary.posts) == (SHARDS, 0, posts) and posts > 700
    assert summary.errors == {"not JSON": 1} and summary.tagged == posts - 1
    bad = [json.loads(line) for line in expected["part-0.jsonl"] if "error" in json.loads(line)]
    assert bad == [{"id": None, "line": 3, "error": "line 3 is not JSON: Expecting value (column 26)"}]
    pictured = {json.loads(line)["id"]: json.loads(line) for shard in expected.values() for line in shard}
    assert "error" not in pictured["t3"] and "error" not in pictured["t5"]
    meta = json.loads((root / "out" / SIDECAR_NAME).read_text())
    assert meta["format"] == "mner-tag-output" and meta["options"]["backend"] == "ort"
    assert not list((root / "out").glob("*.tmp"))


def test_a_rerun_skips_finished_shards_and_redoes_a_deleted_one(archive, first_run, exported_once):
    root, expected = archive
    again = tag_ray(exported_once.bundle, root / "in", root / "out", actors=2, batch_size=8)
    assert (again.shards, again.skipped_shards, again.posts) == (SHARDS, SHARDS, 0)
    deleted = next((root / "out").glob("part-1.jsonl.*.jsonl"))
    deleted.unlink()
    redone = tag_ray(exported_once.bundle, root / "in", root / "out", actors=2, batch_size=8)
    assert (redone.skipped_shards, redone.posts) == (SHARDS - 1, len(expected["part-1.jsonl"]))
    assert records(root / "out") == expected


def test_other_options_on_a_finished_output_are_refused(archive, first_run, exported_once):
    root, _ = archive
    with pytest.raises(ValueError, match=r"other options .*\n  --with-text: false then, true now"):
        tag_ray(exported_once.bundle, root / "in", root / "out", with_text=True)


def test_parquet_output_holds_the_same_records_as_columns_and_reads_as_one_table(local_ray, archive, exported_once):
    """--output-format parquet on two of the archive's shards and a Parquet shard whose image column holds the
    pictures themselves (binary) and whose ids are integers: each output shard's rows are mner-tag's records of
    its input (integer ids as text, absent fields null), and the folder reads as one table."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    root, expected = archive
    source = root / "parquet-in"
    source.mkdir()
    for name in ("part-0.jsonl", "part-3.parquet", "pic.png"):  # pic.png: a row's picture, under --images
        (source / name).write_bytes((root / "in" / name).read_bytes())
    texts = ["Kawhi Leonard in Toronto", "Stanford University", "no picture at all", "a picture that is not one"]
    images = [PNG, PNG, None, b"not a picture"]
    pq.write_table(pa.table({"id": pa.array([7, 8, 9, 10], pa.int64()), "text": texts,
                             "image": pa.array(images, pa.binary())}), source / "pictures.parquet")  # fmt: skip
    as_jsonl = source.parent / "pictures-as-jsonl"
    as_jsonl.mkdir()
    (as_jsonl / "in.jsonl").write_text("".join(
        json.dumps({"id": 7 + k, "text": text, **({"image_base64": base64.b64encode(image).decode()} if image else {})})
        + "\n" for k, (text, image) in enumerate(zip(texts, images))))  # fmt: skip
    with Pipeline.from_bundle(exported_once.bundle) as pipeline:
        tag_jsonl(pipeline, as_jsonl / "in.jsonl", as_jsonl / "out.jsonl", images=as_jsonl, progress=False)
    wanted = {**{name: expected[name] for name in ("part-0.jsonl", "part-3.parquet")},
              "pictures.parquet": (as_jsonl / "out.jsonl").read_text().splitlines()}  # fmt: skip
    assert "image: not an image" in wanted["pictures.parquet"][3] and "error" not in wanted["pictures.parquet"][0]

    summary = tag_ray(exported_once.bundle, source, root / "parquet-out", actors=2, batch_size=8,
                      output_format="parquet", progress=False)  # fmt: skip
    assert (summary.shards, summary.posts) == (3, sum(map(len, wanted.values())))
    columns = parquet_schema().names
    for name, lines in wanted.items():
        (path,) = (root / "parquet-out").glob(f"{name}.*.parquet")
        table = pq.read_table(path)
        assert table.schema.equals(parquet_schema())
        rows = [{column: None for column in columns} | json.loads(line) for line in lines]
        for row in rows:
            row["id"] = None if row["id"] is None else str(row["id"])
        assert table.to_pylist() == rows, name
    whole = pq.read_table(root / "parquet-out")  # the sidecar's "_" keeps it out of the dataset
    assert whole.num_rows == summary.posts
    with pytest.raises(ValueError, match=r"--output-format: \"parquet\" then, \"jsonl\" now"):
        tag_ray(exported_once.bundle, source, root / "parquet-out")


def test_an_actor_killed_mid_run_is_restarted_and_no_row_is_lost_or_repeated(local_ray, archive, exported_once):
    root, expected = archive
    killed: list[int] = []

    def kill_the_actor_once_a_shard_is_written() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if list((root / "killed").glob("*.jsonl")):
                pids = [pid for pid in _processes_titled(WORKER)]
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_actor_once_a_shard_is_written, daemon=True)
    killer.start()
    summary = tag_ray(exported_once.bundle, root / "in", root / "killed", actors=1, batch_size=8)
    killer.join(timeout=5)
    assert killed, "no actor was killed: the run ended before its first shard was written"
    assert len(list((root / "killed").glob("*.jsonl"))) == SHARDS  # it was killed mid-run
    assert records(root / "killed") == expected and summary.posts == sum(map(len, expected.values()))
    shard = next((root / "killed").glob("part-1.jsonl.*.jsonl"))
    shard.unlink()
    shard.with_name(f"{shard.name}.0123456789abcdef0123456789abcdef.tmp").write_text("torn")  # as a kill leaves it
    tag_ray(exported_once.bundle, root / "in", root / "killed", actors=1, batch_size=8)
    assert records(root / "killed") == expected and not list((root / "killed").glob("*.tmp"))


def _processes_titled(fragment: str) -> list[int]:
    """Pids whose command line (Ray sets an actor's to its title) holds ``fragment``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if fragment in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_mner_tag_ray_prints_the_counts_and_exits_3_for_error_records(archive, first_run, exported_once, tmp_path,
                                                                     capfd):  # fmt: skip
    root, _ = archive
    shard = tmp_path / "in" / "a.jsonl"
    shard.parent.mkdir()
    shard.write_text('{"id": 1, "text": "Kawhi Leonard in Toronto"}\nnot json\n')
    args = ["--engine", str(exported_once.bundle), "--input", str(shard.parent), "-o", str(tmp_path / "out"), "--ray",
            "--actors", "1"]  # fmt: skip
    result = CliRunner().invoke(tag_command, [*args, "--no-progress"])
    assert result.exit_code == 3, result.output
    # --no-progress: no bars, and not Ray Data's line telling how to turn them on (it logs to the real stderr)
    assert "Progress bars disabled" not in capfd.readouterr().err
    assert "1 shards -> " in result.output and "2 posts, 1 tagged" in result.output and "1 errors" in result.output
    again = CliRunner().invoke(tag_command, args)
    assert again.exit_code == 0 and "0 written, 1 skipped" in again.output, again.output


@pytest.mark.parametrize(("args", "message"), [
    (["--actors", "2"], "--actors go(es) with --ray"),
    (["--ray-address", "auto"], "--ray-address go(es) with --ray"),
    (["--output-format", "parquet"], "--output-format go(es) with --ray"),
    (["--ray", "--backend", "torch"], "--ray does not take --backend torch"),
    (["--ray", "--output", "-"], "--ray does not take --output -"),
])  # fmt: skip
def test_mner_tag_ray_usage_errors(exported_once, tmp_path, args, message):
    shard = tmp_path / "a.jsonl"
    shard.write_text('{"id": 1, "text": "x"}\n')
    base = ["--engine", str(exported_once.bundle), "--input", str(shard)]
    result = CliRunner().invoke(tag_command, base + (args if "--output" in args else ["-o", str(tmp_path / "o")] + args))
    assert result.exit_code == 2 and message in result.output, result.output


def test_mner_tag_ray_without_ray_names_the_extra(exported_once, tmp_path, monkeypatch):
    from mner.runtime import extras  # noqa: PLC0415

    monkeypatch.setattr(extras, "missing_modules", lambda names: [name for name in names if name == "ray"])
    shard = tmp_path / "a.jsonl"
    shard.write_text('{"id": 1, "text": "x"}\n')
    result = CliRunner().invoke(tag_command, ["--engine", str(exported_once.bundle), "--input", str(shard), "-o",
                                              str(tmp_path / "o"), "--ray"])  # fmt: skip
    assert result.exit_code == 1 and "mner-tag --ray needs ray (not installed): pip install 'mner[ray]'" in result.output


def test_mner_tag_ray_takes_no_conll(exported_once, tmp_path):
    conll = tmp_path / "a.txt"
    conll.write_text("IMGID:1\nx\tO\n")
    result = CliRunner().invoke(tag_command, ["--engine", str(exported_once.bundle), "--conll", str(conll), "-o",
                                              str(tmp_path / "o"), "--ray"])  # fmt: skip
    assert result.exit_code == 2 and "--ray tags --input" in result.output, result.output


@pytest.mark.parametrize(("options", "message"), [
    ({"actors": 0}, "actors must be a positive int, got 0"),
    ({"batch_size": True}, "batch_size must be a positive int, got True"),
    ({"num_cpus": 0}, "num_cpus must be a positive int, got 0"),
    ({"threads": 0}, "threads must be a positive int, got 0"),
    ({"sort_window": 0}, "sort_window must be a positive int, got 0"),
    ({"cpus_per_actor": -1}, "cpus_per_actor must be a number >= 0, got -1"),
    ({"gpus_per_actor": "1"}, "gpus_per_actor must be a number >= 0, got '1'"),
    ({"cpus_per_actor": 0}, "an actor needs some CPU or GPU"),
    ({"backend": "tvm"}, "backend must be one of"),
    ({"on_bad_image": "skip"}, "on_bad_image must be one of"),
    ({"gpus_per_actor": 1}, "gpus_per_actor (--gpus-per-actor) goes with device 'cuda' (--device cuda) or backend 'trt'"),
    ({"output_format": "csv"}, "output_format must be one of ('jsonl', 'parquet'), got 'csv'"),
])  # fmt: skip
def test_bad_options_are_refused_before_ray_starts(exported_once, tmp_path, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tag_ray(exported_once.bundle, tmp_path, tmp_path / "out", **options)


def test_inputs_and_outputs_that_cannot_be_used_are_refused(exported_once, tmp_path):
    bundle = exported_once.bundle
    with pytest.raises(ValueError, match="no such file or folder"):
        tag_ray(bundle, tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_hidden.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no shard: expected files ending in .jsonl"):
        tag_ray(bundle, tmp_path / "empty", tmp_path / "out")
    shard = tmp_path / "a.jsonl"
    shard.write_text("")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="--output .*file is a file; with --ray it is the folder"):
        tag_ray(bundle, shard, tmp_path / "file")
    with pytest.raises(ValueError, match="--images .*: no such directory"):
        tag_ray(bundle, shard, tmp_path / "out", images=tmp_path / "nope")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / SIDECAR_NAME).write_text("{}")
    with pytest.raises(ValueError, match="is not an mner-tag sidecar"):
        tag_ray(bundle, shard, tmp_path / "other")


def test_a_shard_that_cannot_be_read_is_named_and_the_others_are_written(local_ray, archive, exported_once, tmp_path):
    """A file named .parquet that is none stops only itself: no output shard for it (a rerun tries it again), the
    others written, the summary naming it; mner-tag --ray then exits 1 with one line for it."""
    root, expected = archive
    source = tmp_path / "in"
    source.mkdir()
    (source / "part-1.jsonl").write_bytes((root / "in" / "part-1.jsonl").read_bytes())
    (source / "broken.parquet").write_text("not a parquet file\n")
    summary = tag_ray(exported_once.bundle, source, tmp_path / "out", batch_size=8, progress=False)
    assert list(summary.failed) == ["broken.parquet"] and "Parquet magic bytes not found" in summary.failed["broken.parquet"]
    assert records(tmp_path / "out") == {"part-1.jsonl": expected["part-1.jsonl"]}
    assert not list((tmp_path / "out").glob("broken*")) and "broken.parquet: ArrowInvalid: " in summary.format()
    result = CliRunner().invoke(tag_command, ["--engine", str(exported_once.bundle), "--input", str(source), "-o",
                                              str(tmp_path / "out"), "--ray", "--no-progress"])  # fmt: skip
    assert result.exit_code == 1 and "0 written, 1 skipped" in result.output, result.output
    assert "Error: 1 of 2 shards could not be tagged (above)" in result.output


def test_an_output_the_ray_cannot_hold_or_reach_is_refused(local_ray, exported_once, tmp_path, caplog):
    shard = tmp_path / "a.jsonl"
    shard.write_text('{"id": 1, "text": "Kawhi Leonard in Toronto"}\n')
    with pytest.raises(ValueError, match=r"an actor asks for 64 CPUs and 0 GPUs .* this Ray has 2 CPUs and 0 GPUs in "
                                         r"all: no actor could start"):  # fmt: skip
        tag_ray(exported_once.bundle, shard, tmp_path / "out", cpus_per_actor=64)
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(RuntimeError, match=rf"--ray-address 127.0.0.1:{port}: nothing answers there"):
        tag_ray(exported_once.bundle, shard, tmp_path / "out", address=f"127.0.0.1:{port}")
    (tmp_path / "two").mkdir()
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / "two" / name).write_text(shard.read_text())
    with caplog.at_level("WARNING", logger="mner.runtime.ray_tag"):  # two actors of 1.5 CPUs on 2: one at a time
        summary = tag_ray(exported_once.bundle, tmp_path / "two", tmp_path / "out", actors=2, cpus_per_actor=1.5,
                          progress=False)  # fmt: skip
    assert summary.posts == 2 and "2 actors asked for, 1 fit in this Ray's 2 CPUs and 0 GPUs at once" in caplog.text


def test_the_input_folder_or_another_bundle_s_output_is_refused(exported_once, tmp_path, caplog):
    """The input folder as --output would read its own output shards as input next time; another bundle's shards in
    --output would be a second set of records for the same posts; a subfolder of --input is named, not read."""
    source = tmp_path / "in"
    (source / "2026").mkdir(parents=True)
    (source / "a.jsonl").write_text('{"id": 1, "text": "x"}\n')
    with pytest.raises(ValueError, match="--output .* is the --input folder"):
        tag_ray(exported_once.bundle, source, source)
    with pytest.raises(ValueError, match="--output .* is the --input folder"):
        tag_ray(exported_once.bundle, source, tmp_path / "in" / ".." / "in")
    out = tmp_path / "out"
    out.mkdir()
    other = {"format": "mner-tag-output", "format_version": 1, "bundle": {"sha256": "f" * 64, "path": "/old/bundle"},
             "options": {"input": "jsonl", "output_format": "jsonl", "backend": "ort", "precision": "fp32",
                         "on_bad_image": "error", "with_text": False, "max_text_chars": 10000,
                         "max_line_bytes": 16777216}}  # fmt: skip
    (out / SIDECAR_NAME).write_text(json.dumps(other))
    with caplog.at_level("WARNING", logger="mner.runtime.ray_tag"), \
            pytest.raises(ValueError, match=r"holds shards of another bundle .*ffffffffffffffff\.\.\., /old/bundle"):
        tag_ray(exported_once.bundle, source, out)
    assert "its subfolders are not read (2026)" in caplog.text


def test_plain_mner_tag_points_a_parquet_input_to_ray(exported_once, tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    result = CliRunner().invoke(tag_command, ["--engine", str(exported_once.bundle), "--input",
                                              str(tmp_path / "a.parquet"), "-o", str(tmp_path / "o.jsonl")])  # fmt: skip
    assert result.exit_code == 2 and "mner-tag reads JSONL; Parquet shards are read with --ray" in result.output
    assert not (tmp_path / "o.jsonl").exists()

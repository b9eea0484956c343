"""mner-triton's repositories in a real Triton Inference Server: the nvidia-pytriton wheel's tritonserver,
started on 127.0.0.1 with the python flavour (the wheel has no onnxruntime or tensorrt backend), called through
tritonclient. Every answer is compared with ``Pipeline.tag`` on the same bundle in this process.

``make install`` installs the wheel (--no-deps) and NumPy < 2 in .venv/triton-numpy for its Python-backend stub;
without them these tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from mner.runtime.conll import read_conll
from mner.runtime.pipeline import Pipeline
from mner.runtime.triton_local import LocalTriton, TritonUnavailable, wheel_server
from mner.runtime.triton_repository import RepositoryOptions, write_repository

http = pytest.importorskip("tritonclient.http", reason="the Triton client: pip install 'tritonclient[http]'")
from tritonclient.utils import InferenceServerException  # noqa: E402

TEST_TEXT = Path(__file__).resolve().parents[3] / "shared" / "data" / "twitter2017" / "test.txt"
SAMPLE_DATA = Path(matplotlib.get_data_path()) / "sample_data"
PHOTOS = ["grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"]
TRITON_NUMPY = Path(sys.prefix) / "triton-numpy"  # make install's NumPy < 2 for the stub
# what a machine that cannot run the wheel's binary at all says (an old glibc, a missing system library)
CANNOT_RUN = ("error while loading shared libraries", "GLIBC_", "cannot execute binary file")


def numpy_for_stub() -> list[str]:
    if not (TRITON_NUMPY / "numpy").is_dir():
        pytest.skip(f"no NumPy < 2 for Triton's Python-backend stub in {TRITON_NUMPY}: run `make install`")
    return [str(TRITON_NUMPY)]


def start(repository: Path, workdir: Path) -> LocalTriton:
    """A started server, or a skip where the wheel is missing or its binary cannot run on this machine."""
    try:
        wheel_server()
    except TritonUnavailable as error:
        pytest.skip(f"{error} (make install installs it)")
    server = LocalTriton(repository, python_path=numpy_for_stub(), workdir=workdir)
    try:
        return server.start()
    except RuntimeError as error:
        if any(sign in str(error) for sign in CANNOT_RUN):
            pytest.skip(f"the nvidia-pytriton tritonserver cannot run here: {error}")
        raise


def expected(pipeline: Pipeline, posts: list[dict]) -> list[dict]:
    return [r.to_dict() for r in pipeline.tag(posts)]


def same_answer(got: dict, want: dict) -> bool:
    """Entities and objects identical; scores (rounded to 4 places) equal to a unit of the last place, as two
    ONNX Runtime sessions with different batch mates (so different padding) may round them."""
    if set(got) != set(want) or got.get("objects") != want.get("objects") or got.get("image_error") != want.get("image_error"):
        return False
    spans = [[(e["type"], e["text"], e["start"], e["end"]) for e in answer.get("entities", [])] for answer in (got, want)]
    scores = [[e["score"] for e in answer.get("entities", [])] for answer in (got, want)]
    return spans[0] == spans[1] and np.allclose(scores[0], scores[1], rtol=0, atol=1.5e-4)


def inputs(texts: list[bytes], images: list[bytes] | None = None) -> list:
    text = http.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array(texts, dtype=np.object_).reshape(-1, 1))
    if images is None:
        return [text]
    image = http.InferInput("IMAGE", [len(images), 1], "BYTES")
    image.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1))
    return [text, image]


def answers(result) -> list[dict]:
    return [json.loads(row) for row in result.as_numpy("ENTITIES").reshape(-1)]


def photo(name: str) -> bytes:
    return (SAMPLE_DATA / name).read_bytes()


@pytest.fixture(scope="module")
def served(exported_once, tmp_path_factory):
    """The tiny bundle's python-flavour repository in a running tritonserver, a client, and the same bundle's
    Pipeline in this process."""
    root = tmp_path_factory.mktemp("triton")
    repository = write_repository(exported_once.bundle, root / "repository", RepositoryOptions(max_batch_size=8))
    server = start(repository, root / "server")
    client = http.InferenceServerClient(server.http_url, concurrency=32)
    try:
        with Pipeline.from_bundle(exported_once.bundle, batch_size=8) as pipeline:
            yield server, client, pipeline
    finally:
        client.close()
        server.stop()


def test_every_twitter2017_test_post_as_a_raw_tweet_gets_the_pipeline_s_entities(served):
    if not TEST_TEXT.is_file():
        pytest.skip(f"TWITTER-2017 is not at {TEST_TEXT}")
    server, client, pipeline = served
    texts = [" ".join(post.words) for post in read_conll(TEST_TEXT)]
    assert len(texts) == 723
    # one post per request, 16 in flight: the front model's dynamic batcher gathers them as it pleases
    pending = [client.async_infer("mner", inputs([text.encode()])) for text in texts]
    got = [answers(request.get_result())[0] for request in pending]
    want = expected(pipeline, [{"text": text} for text in texts])
    differ = [(text, g, w) for text, g, w in zip(texts, got, want) if not same_answer(g, w)]
    assert not differ, f"{len(differ)} of {len(texts)} posts differ, e.g. {differ[:2]}"
    assert sum(len(w["entities"]) for w in want) > 100  # a model that tags: the comparison means something


def test_posts_with_pictures_and_a_request_of_several_posts(served):
    server, client, pipeline = served
    posts = [{"text": "Grace Hopper speaks at Harvard in Boston", "image": photo(PHOTOS[0])},
             {"text": "New pack from Minduka in London", "image": photo(PHOTOS[1])},
             {"text": "matplotlib logo seen in Paris", "image": photo(PHOTOS[2])},
             {"text": "Grace Hopper again , same picture", "image": photo(PHOTOS[0])}]  # fmt: skip
    want = expected(pipeline, posts)
    assert any(w["objects"] for w in want), "the tiny detector finds no object in any photo: nothing is compared"
    for post, w in zip(posts, want):
        (g,) = answers(client.infer("mner", inputs([post["text"].encode()], [post["image"]])))
        assert same_answer(g, w), (post["text"], g, w)
    # several posts in one request, one of them without a picture (an empty IMAGE row)
    rows = [posts[0], {"text": "Obama in Chicago"}, posts[1]]
    got = answers(client.infer("mner", inputs([p["text"].encode() for p in rows], [p.get("image", b"") for p in rows])))
    assert len(got) == 3
    assert all(same_answer(g, w) for g, w in zip(got, expected(pipeline, rows))), got
    assert got[1]["objects"] == []


@pytest.mark.parametrize(("texts", "images", "message"), [
    ([b""], None, "the post: text is empty: nothing to tag"),
    ([b"  \t "], None, "the post: text is whitespace only"),
    (["a lone \ud800 surrogate".encode("utf-8", "surrogatepass")], None, "TEXT is not UTF-8 text"),
    ([b"\xff\xfe bytes"], None, "TEXT is not UTF-8 text"),
    ([b"x" * 10_001], None, "TEXT has 10001 characters, over the limit of 10000"),
    ([b"Obama in Paris"], [b"not a picture at all"], "the post: image: not an image"),
    ([b"Obama in Paris"], [b"\xff\xd8\xff\xe0" + b"\0" * 64], "the post: image:"),  # a JPEG's start, then nothing
    ([b"Obama", b""], None, "TEXT\\[1\\]|post 1 of 2: text is empty"),
    ([b"Obama", b"Merkel"], [b"", b"broken"], "post 1 of 2: image: not an image"),
], ids=["empty", "whitespace", "lone-surrogate", "not-utf8", "too-long", "not-a-picture", "truncated-jpeg",
        "second-of-two-empty", "second-of-two-broken-picture"])  # fmt: skip
def test_a_bad_post_is_its_request_s_error_and_the_server_goes_on(served, texts, images, message):
    server, client, pipeline = served
    with pytest.raises(InferenceServerException, match=message) as caught:
        client.infer("mner", inputs(texts, images))
    assert caught.value.status() == "400", caught.value  # the client's fault, not the server's
    assert client.is_server_ready() and client.is_model_ready("mner")
    (after,) = answers(client.infer("mner", inputs([b"Barack Obama visits Paris"])))
    assert same_answer(after, expected(pipeline, [{"text": "Barack Obama visits Paris"}])[0])


def test_a_bad_request_among_good_ones_spoils_only_itself(served):
    server, client, pipeline = served
    good = [f"post {k} : Obama meets Merkel in Berlin".encode() for k in range(12)]
    pending = [client.async_infer("mner", inputs([text])) for text in good[:6]]
    pending.append(client.async_infer("mner", inputs([b""])))
    pending += [client.async_infer("mner", inputs([text])) for text in good[6:]]
    results = []
    for request in pending:
        try:
            results.append(answers(request.get_result())[0])
        except InferenceServerException as error:
            results.append(error)
    assert isinstance(results[6], InferenceServerException) and "text is empty" in str(results[6])
    tagged = results[:6] + results[7:]
    assert all(same_answer(g, w) for g, w in zip(tagged, expected(pipeline, [{"text": t.decode()} for t in good])))


def test_32_clients_at_once_lose_nothing(served):
    if not TEST_TEXT.is_file():
        pytest.skip(f"TWITTER-2017 is not at {TEST_TEXT}")
    server, client, pipeline = served
    texts = [" ".join(post.words) for post in read_conll(TEST_TEXT)][:256]
    posts = [{"text": t, "image": photo(PHOTOS[k % 3])} if k % 4 == 0 else {"text": t} for k, t in enumerate(texts)]
    load = http.InferenceServerClient(server.http_url, concurrency=32)  # 32 connections, 32 requests in flight
    try:
        pending = [load.async_infer("mner", inputs([p["text"].encode()], [p["image"]] if "image" in p else None),
                                    request_id=str(k)) for k, p in enumerate(posts)]  # fmt: skip
        got = [answers(request.get_result())[0] for request in pending]
    finally:
        load.close()
    want = expected(pipeline, posts)
    assert len(got) == len(posts)
    differ = [k for k, (g, w) in enumerate(zip(got, want)) if not same_answer(g, w)]
    assert not differ, f"posts {differ[:10]} differ"
    statistics = client.get_inference_statistics("mner")["model_stats"][0]["inference_stats"]
    assert int(statistics["success"]["count"]) >= len(posts)  # Triton's own count agrees
    assert client.is_server_ready()


def test_a_changed_file_in_the_repository_fails_its_model_at_load(exported_once, tmp_path):
    repository = write_repository(exported_once.bundle, tmp_path / "repository")
    graph = repository / "tagger" / "1" / "model.onnx"
    data = bytearray(graph.read_bytes())
    graph.unlink()  # a hard link to the bundle's own file: replace it, do not write through it
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="tritonserver exited") as caught:
        start(repository, tmp_path / "server")
    log = str(caught.value)
    assert "model.onnx: sha256" in log and "the bundle's manifest says" in log and "tagger.onnx" in log
    # the reason per model, not the server's option tables around it in the log
    assert "model tagger (version 1): UNAVAILABLE: " in log and "server_version" not in log
    # the models that loaded before the server gave up had shared-memory regions: none is left behind


def test_a_server_killed_outright_leaves_no_shared_memory_behind(exported_once, tmp_path):
    """A server SIGKILLed (or stopped after its 60 s grace) cannot remove its Python-backend regions from /dev/shm;
    stop() removes them, found by the server's own prefix."""
    server = start(write_repository(exported_once.bundle, tmp_path / "repository"), tmp_path / "server")
    try:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
        assert server.shm_regions(), "a killed server left no region: nothing here would test stop()'s clean-up"
    finally:
        server.stop()
    assert not server.shm_regions()


def test_the_native_flavour_loads_up_to_its_missing_backend(exported_once, tmp_path):
    """This Triton has no onnxruntime backend: the native repository's stage models fail for that reason only
    (their configs are accepted), and the front model's own checks of the stage files pass."""
    repository = write_repository(exported_once.bundle, tmp_path / "repository", RepositoryOptions(flavour="native", kind="cpu"))
    with pytest.raises(RuntimeError, match="tritonserver exited") as caught:
        start(repository, tmp_path / "server")
    log = (tmp_path / "server" / "tritonserver.log").read_text(errors="replace")
    failures = dict(re.findall(r"failed to load '(\w+)' version 1: ([^\n]*)", log))
    assert sorted(failures) == ["detector", "tagger", "vision"]  # nothing else failed
    for why in failures.values():
        assert why.startswith("Invalid argument: unable to find backend library for backend 'onnxruntime'"), why
    assert "successfully loaded 'mner'" in log  # the front model checked the stage models' files and loaded


SLOW_STAGE = '''

import time  # noqa: E402

from mner.runtime.triton_models import StageModel  # noqa: E402


class TritonPythonModel(StageModel):  # noqa: F811 -- the test's slow stage: two seconds in every call
    def execute(self, requests):
        time.sleep(2.0)
        return super().execute(requests)
'''


def test_detector_and_vision_run_at_the_same_time(exported_once, tmp_path):
    """With detector and vision each made to take two seconds per call, a post with a picture takes about two
    seconds, not four: the front model's two BLS requests are in flight together (the pipeline's two image
    threads, each a blocking BLS request)."""
    repository = write_repository(exported_once.bundle, tmp_path / "repository")
    for stage in ("detector", "vision"):
        model = repository / stage / "1" / "model.py"
        model.write_text(model.read_text() + SLOW_STAGE)
    server = start(repository, tmp_path / "server")
    client = http.InferenceServerClient(server.http_url)
    try:
        client.infer("mner", inputs([b"warm up"]))  # text only: the stages of pictures are not called
        began = time.perf_counter()
        (answer,) = answers(client.infer("mner", inputs([b"Grace Hopper in Boston"], [photo(PHOTOS[0])])))
        took = time.perf_counter() - began
    finally:
        client.close()
        server.stop()
    assert "entities" in answer
    assert 2.0 <= took < 3.5, f"a post with a picture took {took:.2f} s with two 2-second stages"


def test_python_m_triton_local_serves_until_sigterm_and_leaves_no_process(exported_once, tmp_path):
    """The README's way to try a repository here: ready line, an answer on the chosen port, SIGTERM ends the
    server and its Python-backend stubs."""
    numpy_dirs = numpy_for_stub()
    try:
        wheel_server()
    except TritonUnavailable as error:
        pytest.skip(f"{error} (make install installs it)")
    repository = write_repository(exported_once.bundle, tmp_path / "repository")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "mner.runtime.triton_local", str(repository), "--http-port", str(port),
               "--numpy", numpy_dirs[0]]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith(f"tritonserver ready: HTTP http://127.0.0.1:{port},"), line
        client = http.InferenceServerClient(f"127.0.0.1:{port}")
        (answer,) = answers(client.infer("mner", inputs([b"Obama visits Paris"])))
        client.close()
        assert "entities" in answer
        assert list(Path("/dev/shm").glob(f"mner_triton_{process.pid}_*"))  # its regions, named as stop() finds them
        log = Path(re.search(r"its log: (\S+);", line).group(1))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    left = subprocess.run(["pgrep", "-f", str(repository)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes still running for {repository}: {left}"
    assert not log.parent.exists()  # its working folder (backends, log) is removed
    assert not list(Path("/dev/shm").glob(f"mner_triton_{process.pid}_*"))  # nor its shared-memory regions


def test_python_m_triton_local_refuses_a_numpy_folder_without_numpy(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mner.runtime.triton_local", str(tmp_path), "--numpy", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert f"{tmp_path} holds no numpy: pip install --target {tmp_path} 'numpy<2'" in result.stderr


def test_python_m_triton_local_refuses_numpy_2_a_bundle_and_a_busy_port(exported_once, tmp_path):
    numpy2 = tmp_path / "numpy2"
    (numpy2 / "numpy").mkdir(parents=True)
    (numpy2 / "numpy-2.4.6.dist-info").mkdir()
    numpy1 = tmp_path / "numpy1"
    (numpy1 / "numpy").mkdir(parents=True)

    def run(*arguments):
        return subprocess.run([sys.executable, "-m", "mner.runtime.triton_local", *map(str, arguments)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    result = run(tmp_path, "--numpy", numpy2)
    assert result.returncode == 2 and "holds numpy 2.4.6; the Python-backend stub needs numpy<2" in result.stderr
    result = run(exported_once.bundle, "--numpy", numpy1)
    assert result.returncode == 2 and "is an mner bundle, not a model repository: write one first with mner-triton" in result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run(tmp_path, "--numpy", numpy1, "--http-port", busy.getsockname()[1])
    assert result.returncode == 2 and "is in use (another server?): pick another --http-port, or 0" in result.stderr

"""mner-serve's page (GET /, runtime/web) in a real browser: headless Chromium driven by Selenium, on a real mner-serve
process on 127.0.0.1 serving the tiny bundle (test_exported_bundle, with picture stages).

What the page shows is checked against what the API answers for the same post: the highlighted spans and their
types read from the DOM, a real photograph's objects beside its thumbnail, each refusal's message next to the input
it concerns. A post made of markup shows literally and runs nothing, and the browser itself refuses HTML strings
(the Content-Security-Policy's Trusted Types). With MNER_SCREENSHOT set, the browser's screenshot of a tagged post
with a picture is written there (the README's).

The browser is Debian's ``chromium`` with its ``chromium-driver`` (.ci/run installs them where missing), or another
Chromium named by MNER_CHROMIUM / MNER_CHROMEDRIVER; without one, or without the selenium package, every browser test
skips and says why. Nothing is downloaded: Selenium is given both paths, so its driver manager never runs.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import time
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_exported_bundle import exported, jpeg  # noqa: F401 -- `exported` is a fixture
from test_serve import multipart
from test_serve_operations import ServerProcess, _assets, get

from mner.benchmarks.loadtest import post_body
from mner.runtime import serve_api
from mner.runtime.serve import CONTENT_SECURITY_POLICY

MAX_TEXT_CHARS = 300  # small, so that a text too long is quick to make
WAIT_S = 30  # for an answer: the tiny bundle answers in milliseconds, but the two cores are shared


def _photo() -> Path:
    """A real photograph: matplotlib's sample (matplotlib is in the train extra, which the tests install)."""
    cbook = pytest.importorskip("matplotlib.cbook", reason="the sample photograph is matplotlib's")
    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


# --------------------------------------------------------------------------- the server and the browser


@contextlib.contextmanager
def serving(bundle, *options: str):
    """mner-serve on ``bundle`` (--port 0): its port, once ready."""
    process = ServerProcess(bundle, "--no-verify", "--drain-s", "0", *options)
    try:
        line = process.wait_for("listening on")
        port = int(line.split("listening on http://127.0.0.1:", 1)[1].split()[0])
        deadline = time.monotonic() + 60
        while get(port, "/readyz").status != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield port
    finally:
        process.stop()


@pytest.fixture(scope="module")
def server(exported):  # noqa: F811
    """The port of mner-serve on the tiny bundle."""
    with serving(exported.bundle, "--max-text-chars", str(MAX_TEXT_CHARS)) as port:
        yield port


def _chromium() -> tuple[str, str]:
    """(browser, driver) paths, or a skip saying what is missing."""
    browser = os.environ.get("MNER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("MNER_CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser or not driver:
        missing = " and ".join(name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path)
        pytest.skip(f"no {missing} on PATH (Debian: apt-get install chromium chromium-driver; .ci/run does)")
    return browser, driver


# Session-scoped, and named first by every test that uses it: pytest sets up wider fixtures first, so a machine
# without Chromium skips before the bundles (session fixtures, ~1 minute) are exported for nothing.
@pytest.fixture(scope="session")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
    from selenium.common.exceptions import WebDriverException  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,860",
                     "--force-device-scale-factor=1", "--lang=en-US"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors and CSP reports, read below
    try:
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
    except WebDriverException as error:
        pytest.skip(f"Chromium ({binary}, {driver_path}) did not start: {error.msg}")
    try:
        yield driver
    finally:
        driver.quit()


def _open(browser, port: int) -> None:
    """The page, fresh, once it has read /v1/info (its legend is drawn then)."""
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    browser.get(f"http://127.0.0.1:{port}/")
    WebDriverWait(browser, WAIT_S).until(lambda driver: driver.execute_script(
        "return document.querySelectorAll('#legend li').length > 0"))
    browser.get_log("browser")  # from here on, only this page's messages


def _submit_and_wait(browser, *, expect: str = "answer") -> None:
    """Ctrl+Enter in the post, then wait for the answer ("answer") or a refusal ("error")."""
    from selenium.webdriver.common.keys import Keys  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    browser.execute_script("document.getElementById('status').textContent = 'waiting'")
    browser.find_element("id", "text").send_keys(Keys.CONTROL, Keys.ENTER)
    done = "answered in" if expect == "answer" else "Not tagged"
    WebDriverWait(browser, WAIT_S).until(lambda driver: done in driver.find_element("id", "status").text)


def _set_text(browser, text: str) -> None:
    """Put ``text`` in the post as the user's typing would (an input event); for what send_keys cannot type
    (ChromeDriver types the Basic Multilingual Plane only, so no emoji) or need not (hundreds of characters)."""
    browser.execute_script("const box = document.getElementById('text'); box.value = arguments[0]; "
                           "box.dispatchEvent(new Event('input'))", text)  # fmt: skip


_READ_ANSWER = """
const tagged = document.getElementById('tagged');
const text = [], entities = [];
for (const node of tagged.childNodes) {
  if (node.nodeType === Node.TEXT_NODE) { text.push(node.data); continue; }
  const shown = node.querySelector('.entity-text').textContent;
  entities.push({type: node.dataset.type, text: shown, start: Number(node.dataset.start), end: Number(node.dataset.end),
                 score: Number(node.dataset.score), label: node.querySelector('.entity-type').textContent,
                 tag: node.tagName, classes: node.className});
  text.push(shown);
}
return {text: text.join(''), entities, elements: tagged.querySelectorAll('*').length,
        objects: Array.from(document.querySelectorAll('#objects li'), (li) => li.textContent),
        pictureShown: !document.getElementById('picture-answer').hidden,
        thumbWidth: document.getElementById('thumb').naturalWidth,
        timing: (document.getElementById('timing') || {}).textContent};
"""


def _hand_over(browser, how: str, target: str, picture: bytes, name: str) -> None:
    """A JPEG file named ``name`` dropped on (``how`` "drop") or pasted into ("paste") the element with id ``target``,
    as the browser delivers one: the event's DataTransfer holds the file."""
    event = ("new DragEvent('drop', {dataTransfer: files, bubbles: true, cancelable: true})" if how == "drop" else
             "new ClipboardEvent('paste', {clipboardData: files, bubbles: true, cancelable: true})")  # fmt: skip
    browser.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));"
        "const files = new DataTransfer(); files.items.add(new File([bytes], arguments[1], {type: 'image/jpeg'}));"
        f"document.getElementById(arguments[2]).dispatchEvent({event})", base64.b64encode(picture).decode(), name, target)


def _answer(browser) -> dict:
    return browser.execute_script(_READ_ANSWER)


def _severe_logs(browser) -> list[str]:
    """The console's errors since the last read: a script error, a CSP violation, a failed load."""
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def _same_entities(shown: list[dict], api: list[dict]) -> None:
    assert [(e["type"], e["text"], e["start"], e["end"]) for e in shown] == \
           [(e["type"], e["text"], e["start"], e["end"]) for e in api]  # fmt: skip
    assert [e["score"] for e in shown] == pytest.approx([e["score"] for e in api])
    assert all(e["label"] == e["type"] and e["tag"] == "MARK" for e in shown), "the type is written in each highlight"


# --------------------------------------------------------------------------- over HTTP


def _inline(html: str) -> list[str]:
    """What in ``html`` is script or style written into the page: a <script> without src, a <style>, a style=
    attribute, an on...= handler, a javascript: URL."""
    found: list[str] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            names = dict(attrs)
            if tag == "style" or (tag == "script" and not names.get("src")):
                found.append(f"<{tag}>")
            found.extend(f"{tag} {name}=" for name, value in attrs
                         if name == "style" or name.startswith("on") or (value or "").strip().startswith("javascript:"))

    Collect().feed(html)
    return found


def test_the_page_is_its_own_files_under_a_policy_that_allows_only_them(server, exported):  # noqa: F811
    page = get(server, "/")
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'",
                      "img-src 'self' blob:", "require-trusted-types-for 'script'"):  # fmt: skip
        assert directive in CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.body.decode()
    assert _inline(html) == [], "no inline script, style or event handler: the policy would block them"
    assets = _assets(html)
    assert set(assets) == {"/web/icon.svg", "/web/style.css", "/web/app.js", "/docs"}
    for asset in assets:
        served = get(server, asset)
        assert served.status == 200 and len(served.body) > 100, asset
    assert get(server, "/web/app.js").headers["content-type"] == "text/javascript; charset=utf-8"
    assert get(server, "/web/style.css").headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    for elsewhere in ("/web/", "/web/../serve.py", "/web/nothing.js", "/index.html"):
        assert get(server, elsewhere).status == 404, "only the page's named files are served"
    head = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    head.request("HEAD", "/")
    assert head.getresponse().status == 200
    head.close()

    info = get(server, "/v1/info").json()
    serve_api.Info.model_validate(info)
    manifest = json.loads((exported.bundle / "manifest.json").read_text())
    assert info["bundle"] == exported.bundle.name and info["pictures"] is True
    assert (info["backend"], info["device"], info["precision"], info["verified"]) == ("ort", "cpu", "fp32", False)
    assert info["stages"] == ["detector", "vision", "tagger"] and info["random_weights"] is True
    assert info["entity_types"] == manifest["tags"]["entity_types"] and info["max_text_chars"] == MAX_TEXT_CHARS
    assert info["created"] == manifest["created"]
    assert info["random_stages"] == [name for name, stage in manifest["stages"].items()
                                     if (stage.get("weights") or {}).get("source") == "random"]  # fmt: skip
    assert "/v1/info" in get(server, "/openapi.json").json()["paths"]


# --------------------------------------------------------------------------- in the browser


def test_a_typed_post_is_highlighted_as_the_api_tags_it(browser, server):
    _open(browser, server)
    facts = browser.find_element("id", "facts").text
    assert "ort on cpu" in facts and "fp32" in facts and "detector + vision + tagger" in facts
    assert browser.find_element("id", "random-warning").is_displayed(), "a random model says so"
    info = get(server, "/v1/info").json()
    legend = [item.text for item in browser.find_elements("css selector", "#legend .swatch")]
    assert legend == info["entity_types"]

    # An emoji (two UTF-16 units, one code point) and a line break before the entities: the API's offsets count
    # code points, the page's strings UTF-16 units.
    prefix = "🎉 big night\n"
    typed = "Kawhi Leonard scores 30 in Toronto, Obama meets Merkel in Berlin"
    _set_text(browser, prefix)
    browser.find_element("id", "text").send_keys(typed)
    _submit_and_wait(browser)
    text = prefix + typed
    api = get(server, "/v1/tag", post_body(text)).json()
    assert any(entity["start"] >= len(prefix) for entity in api["entities"]), "entities after the emoji"
    shown = _answer(browser)
    assert shown["text"] == text
    _same_entities(shown["entities"], api["entities"])
    assert not shown["pictureShown"] and shown["timing"].endswith(" ms")

    # The score: hidden until the entity is focused (keyboard) or hovered.
    mark = browser.find_element("css selector", "#tagged mark")
    score = mark.find_element("css selector", ".entity-score")
    assert score.size["width"] <= 1
    browser.execute_script("arguments[0].focus()", mark)
    assert score.size["width"] > 10 and score.text == f"score {api['entities'][0]['score']:.2f}"
    assert _severe_logs(browser) == []


def test_a_photo_shows_its_objects_beside_a_thumbnail(browser, server):
    photo = _photo()
    _open(browser, server)
    browser.find_element("id", "image").send_keys(str(photo))
    assert browser.find_element("id", "preview").is_displayed()
    assert browser.find_element("id", "preview-name").text.startswith("grace_hopper.jpg")
    text = "Grace Hopper speaks at Harvard about COBOL and the Navy"
    browser.find_element("id", "text").send_keys(text)
    _submit_and_wait(browser)

    body, content_type = multipart({"text": text.encode(), "image": photo.read_bytes()})
    api = get(server, "/v1/tag", body, content_type).json()
    assert api["objects"], "the tiny bundle's stand-in detector finds objects in this photo"
    assert get(server, "/v1/tag", post_body(text, photo.read_bytes())).json() == api  # JSON or multipart alike
    shown = _answer(browser)
    assert shown["pictureShown"] and shown["thumbWidth"] == 512  # the photo, decoded by the browser
    assert shown["objects"] == api["objects"]
    _same_entities(shown["entities"], api["entities"])
    assert _severe_logs(browser) == []
    if os.environ.get("MNER_SCREENSHOT"):
        browser.execute_script("window.scrollTo(0, 0)")  # WebDriver scrolled to the elements it typed into
        browser.save_screenshot(os.environ["MNER_SCREENSHOT"])


def test_a_dropped_or_pasted_picture_is_the_posts(browser, server):
    _open(browser, server)
    picture = jpeg(40, 60, seed=3)
    _hand_over(browser, "drop", "tagged", picture, "dropped.jpg")  # anywhere on the page
    assert browser.find_element("id", "preview-name").text.startswith("dropped.jpg")
    assert browser.execute_script("return document.getElementById('image').files[0].name") == "dropped.jpg"

    browser.find_element("id", "clear-image").click()
    assert not browser.find_element("id", "preview").is_displayed()
    _hand_over(browser, "paste", "text", picture, "pasted.jpg")
    assert browser.find_element("id", "preview-name").text.startswith("pasted.jpg")
    assert browser.find_element("id", "text").get_attribute("value") == "", "a pasted picture is not text"

    browser.find_element("id", "text").send_keys("Nice day in Paris")
    _submit_and_wait(browser)
    api = get(server, "/v1/tag", post_body("Nice day in Paris", picture)).json()
    shown = _answer(browser)
    assert shown["pictureShown"] and shown["objects"] == api["objects"] and shown["thumbWidth"] == 60
    _same_entities(shown["entities"], api["entities"])


def test_markup_in_a_post_shows_literally_and_runs_nothing(browser, server):
    _open(browser, server)
    text = ('<script>window.ranScript = 1</script> Obama <img src=x onerror="window.ranImage = 1"> meets '
            "<b>Merkel</b> in Berlin &amp; <a href=\"javascript:alert(1)\">Paris</a>")  # fmt: skip
    browser.find_element("id", "text").send_keys(text)
    _submit_and_wait(browser)
    api = get(server, "/v1/tag", post_body(text)).json()
    shown = _answer(browser)
    assert shown["text"] == text, "every character of the post is shown as itself"
    _same_entities(shown["entities"], api["entities"])
    # The answer holds only the page's own elements: a mark and its three spans per entity.
    assert shown["elements"] == 4 * len(api["entities"])
    assert browser.execute_script("return [window.ranScript, window.ranImage, document.images.length]") == [None, None, 2]
    assert _severe_logs(browser) == [], "nothing was even attempted (a CSP violation would be logged)"
    # Had the page inserted HTML, the browser would have refused: the policy's Trusted Types turn a string given
    # to innerHTML into an error.
    from selenium.common.exceptions import JavascriptException  # noqa: PLC0415

    with pytest.raises(JavascriptException, match="TrustedHTML"):
        browser.execute_script("document.getElementById('tagged').innerHTML = arguments[0]", text)


def test_an_error_is_shown_next_to_the_input_it_concerns_in_the_apis_words(browser, server, tmp_path):
    _open(browser, server)

    def error_at(field: str) -> tuple[str, str]:
        """(kind, message) shown at ``field``; the other error places are empty."""
        for other in {"text", "image", "form"} - {field}:
            assert browser.find_element("id", f"{other}-error").text == "", other
        where = browser.find_element("id", f"{field}-error")
        return where.find_element("css selector", ".error-kind").text, where.find_element("css selector", ".error-message").text

    _submit_and_wait(browser, expect="error")  # nothing typed
    refused = get(server, "/v1/tag", post_body("")).json()["error"]
    assert error_at("text") == (f"{refused['kind']} (422):", refused["message"]) == ("empty text (422):", refused["message"])
    assert browser.find_element("id", "text").get_attribute("aria-invalid") == "true"
    assert browser.switch_to.active_element.get_attribute("id") == "text", "focus goes to the input concerned"

    too_long = "Paris " * (MAX_TEXT_CHARS // 6 + 1)
    _set_text(browser, too_long)
    assert browser.find_element("id", "text").get_attribute("aria-invalid") is None, "editing clears the error"
    _submit_and_wait(browser, expect="error")
    refused = get(server, "/v1/tag", post_body(too_long)).json()["error"]
    assert refused["kind"] == "text too long" and error_at("text") == ("text too long (422):", refused["message"])

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a picture, whatever its name says")
    _set_text(browser, "Nice day in Paris")
    browser.find_element("id", "image").send_keys(str(broken))
    _submit_and_wait(browser, expect="error")
    body, content_type = multipart({"text": b"Nice day in Paris", "image": broken.read_bytes()})
    refused = get(server, "/v1/tag", body, content_type).json()["error"]
    assert refused["kind"] == "bad image" and error_at("image") == ("bad image (422):", refused["message"])
    assert browser.find_element("id", "image").get_attribute("aria-invalid") == "true"
    assert browser.find_element("id", "text").get_attribute("aria-invalid") is None
    assert "Not tagged: bad image" in browser.find_element("id", "status").text


def test_labels_focus_order_live_answer_and_phone_width(browser, server):
    from selenium.webdriver.common.action_chains import ActionChains  # noqa: PLC0415
    from selenium.webdriver.common.keys import Keys  # noqa: PLC0415

    _open(browser, server)
    find = browser.find_element
    assert find("id", "text").accessible_name == "Post"
    assert find("id", "image").accessible_name.startswith("Picture (optional)")
    assert find("id", "tag").accessible_name == "Tag"
    assert find("id", "answer").get_attribute("aria-live") == "polite"
    assert all(button.accessible_name for button in browser.find_elements("css selector", "button.example"))

    # Focus order: the post, the picture, Tag, then the examples; an example fills the post.
    find("id", "text").click()
    order = []
    for _ in range(3):
        ActionChains(browser).send_keys(Keys.TAB).perform()  # a key press, not typed into the element (a file input)
        order.append(browser.switch_to.active_element.get_attribute("id") or browser.switch_to.active_element.get_attribute("class"))
    assert order == ["image", "tag", "example"]
    example = browser.switch_to.active_element.text
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    assert find("id", "text").get_attribute("value") == example
    assert browser.switch_to.active_element.get_attribute("id") == "text"

    size = browser.get_window_size()
    try:
        browser.set_window_size(390, 844)  # a phone's width
        _submit_and_wait(browser)
        widths = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], "nothing runs off a phone's screen sideways"
        assert find("id", "tag").is_displayed() and find("id", "tagged").is_displayed()
        assert find("id", "tagged").rect["x"] < 40, "the answer sits below the form, not beside it"
    finally:
        browser.set_window_size(size["width"], size["height"])


def test_a_text_only_bundle_takes_no_picture(browser, tagger_bundle):
    with serving(tagger_bundle.bundle) as port:
        _open(browser, port)
        assert get(port, "/v1/info").json()["pictures"] is False
        assert not browser.find_element("id", "image").is_enabled()
        assert browser.find_element("id", "image-hint").text == "This bundle has no picture stages: it tags text only."
        # The API would refuse the picture (in these words); the page does not send one.
        refused = get(port, "/v1/tag", post_body("Nice day in Paris", jpeg(40, 60, seed=3))).json()["error"]
        assert refused["kind"] == "bad image" and "exported for text only" in refused["message"]
        _hand_over(browser, "paste", "text", jpeg(40, 60, seed=3), "p.jpg")
        assert browser.find_element("id", "image-error").text == "This bundle has no picture stages: it tags text only."
        assert not browser.find_element("id", "preview").is_displayed()
        browser.find_element("id", "text").send_keys("Obama meets Merkel in Berlin")
        _submit_and_wait(browser)
        shown = _answer(browser)
        _same_entities(shown["entities"], get(port, "/v1/tag", post_body("Obama meets Merkel in Berlin")).json()["entities"])
        assert not shown["pictureShown"]


def test_ci_installs_the_browser_before_the_tests_and_the_test_extra_has_selenium():
    repo = Path(__file__).resolve().parents[2]
    run = (repo / ".ci" / "run").read_text()
    install = run.index("apt-get install -y -qq chromium chromium-driver")
    assert run.index("command -v chromium") < install < run.index("make test")
    test_extra = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert any(line.startswith("selenium") for line in test_extra)

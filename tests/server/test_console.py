"""The console (/console) in a real browser: Debian's chromium driven by chromedriver through Selenium, headless,
against the real app under uvicorn on 127.0.0.1 with the tiny exported model and a gallery of synthetic people
(kept crops, cameras, capture times, tracks whose ids hold a "/", linked into identities through the admin route
POST /v1/identities/link, plus a track with no capture time, which linking leaves out, and an item in no track).
Every test ends by checking that the page made no request outside
127.0.0.1 (chromium's network log) and logged no error (its console log) beyond the ones the test provoked.

REID_SCREENSHOTS=DIR saves the screenshots the README shows (console-search.png, console-timeline.png) in DIR.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from server.settings import Settings
from tests.support import TINY_THRESHOLD, FakeEmbedder, LiveServer, person_crops, png_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)",
)

ADMIN, READER = "console-admin-key-0123", "console-read-key-4567"
BASE_TIME = 1_772_442_000.0  # 2026-03-02 09:00:00 UTC: the gallery's captures are spread over the hour after it
WAIT_S = 60  # the page waits on the model and the gallery; generous for a shared CI machine


@dataclass
class Item:
    id: int
    path: Path
    person: str
    camera: str
    captured_at: float | None
    track: str | None


@dataclass
class Console:
    url: str
    items: list[Item]  # the people: one track per person and camera
    erasable: Item  # an item no other test searches for: the erase tests remove it
    unlinked: Item  # the one item of a track without capture times: linking leaves it without an identity
    loose: Item  # an item in no track
    linked: dict  # GET /v1/identities/{id} of an identity whose tracks are on two cameras or more
    not_an_image: Path


def _describe(path: Path) -> tuple[str, str, float, str]:
    """Person, camera, capture time and track of a Market-1501 name (PPPP_cCsS_FFFFFF_NN.jpg)."""
    person, cam_seq, frame, _ = path.stem.split("_")
    camera = cam_seq[1 : cam_seq.index("s")]
    captured_at = BASE_TIME + int(camera) * 900 + int(frame) % 600  # cameras a quarter of an hour apart
    return person, camera, captured_at, f"c{camera}/{person}"  # a "/" in a track id: the page must encode it


def _add(client: httpx.Client, item: Item) -> Item:
    data = {"person_id": item.person, "camera_id": item.camera}
    if item.captured_at is not None:
        data["captured_at"] = str(item.captured_at)
    if item.track is not None:
        data["track_id"] = item.track
    files = {"images": (item.path.name, item.path.read_bytes(), "image/jpeg")}
    r = client.post("/v1/gallery", files=files, data=data)
    assert r.status_code == 201, r.text
    item.id = r.json()["ids"][0]
    return item


def _linked_across_cameras(client: httpx.Client, track: str) -> dict:
    """Link the gallery's tracks through the admin route, and answer the timeline of the identity of ``track``."""
    r = client.post("/v1/identities/link")
    assert r.status_code == 200, r.text
    assert r.json()["untimed"] == 1  # the track without capture times
    identity = client.get(f"/v1/tracks/{track}").json()["identity_id"]
    timeline = client.get(f"/v1/identities/{identity}").json()
    # the tiny model, trained on these people, links a person's passes by several cameras
    assert len({e["camera_id"] for e in timeline["timeline"]}) >= 2, timeline
    return timeline


@pytest.fixture(scope="module")
def console(tiny_artifact, synth_data, tmp_path_factory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    settings = Settings(
        backend="onnx",
        artifact=tiny_artifact,
        gallery_dir=tmp / "gallery",
        create_gallery=True,
        keep_crops=True,
        admin_keys=ADMIN,
        read_keys=READER,
        _env_file=None,
    )
    crops = [p for p in sorted((synth_data / "bounding_box_test").glob("*.jpg")) if not p.name.startswith("0000_")]
    with LiveServer(settings) as url, httpx.Client(base_url=url, headers={"X-API-Key": ADMIN}, timeout=60) as client:
        items = [_add(client, Item(0, path, *_describe(path))) for path in crops]
        # Query crops of the other people: the searches for the first person (the screenshots) rank them low.
        queries = sorted(q for q in (synth_data / "query").glob("*.jpg") if not q.name.startswith(items[0].person))
        erasable = _add(client, Item(0, queries[-1], "erase-me", "9", BASE_TIME, "c9/erase-me"))
        unlinked = _add(client, Item(0, queries[-2], "walk-in", "9", None, "c9/walk-in"))
        loose = _add(client, Item(0, queries[-3], "no-track", "9", None, None))
        linked = _linked_across_cameras(client, items[0].track)
        not_an_image = tmp / "notes.png"
        not_an_image.write_text("these are notes, not a picture\n")
        yield Console(url, items, erasable, unlinked, loose, linked, not_an_image)


HOSTILE = '<img src=x onerror="document.title=1">&amp;</dd>'  # a person id a client could add: text, never markup
SMALL_UPLOAD = 64 * 1024


@dataclass
class Faulty:
    url: str
    embedder: FakeEmbedder
    hostile: Path  # the crop of an item whose person and camera are HOSTILE
    too_large: Path  # a crop larger than the server's upload limit


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> Iterator[Faulty]:
    """A server whose embedder can be made to fail, with a small upload limit and an item named by a hostile
    client."""
    tmp = tmp_path_factory.mktemp("console-faulty")
    settings = Settings(
        gallery_dir=tmp / "gallery",
        create_gallery=True,
        keep_crops=True,
        admin_keys=ADMIN,
        max_upload_bytes=SMALL_UPLOAD,
        _env_file=None,
    )
    embedder = FakeEmbedder()
    hostile = tmp / "hostile.png"
    hostile.write_bytes(person_crops(1, seed=7)[0])
    too_large = tmp / "large.png"
    noise = np.random.default_rng(0).integers(0, 256, (256, 128, 3), dtype=np.uint8)
    too_large.write_bytes(png_bytes(noise))
    assert too_large.stat().st_size > SMALL_UPLOAD
    with LiveServer(settings, embedder=embedder) as url:
        r = httpx.post(
            f"{url}/v1/gallery",
            headers={"X-API-Key": ADMIN},
            files={"images": ("h.png", hostile.read_bytes(), "image/png")},
            data={"person_id": HOSTILE, "camera_id": HOSTILE, "metadata": json.dumps({"note": HOSTILE})},
        )
        assert r.status_code == 201, r.text
        yield Faulty(url, embedder, hostile, too_large)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--lang=en-GB",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: WebDriver) -> Iterator[WebDriver]:
    """The browser for one test (open_console signs out of the server it opens); afterwards, the checks every page
    must pass: no request outside the server, no error in the console beyond those the test expects."""
    browser.set_window_size(1280, 800)
    browser.expected_errors = []  # substrings of console errors this test provokes on purpose
    yield browser
    _assert_stayed_local(browser, browser.origin)
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    unexpected = [m for m in errors if not any(expected in m for expected in browser.expected_errors)]
    assert not unexpected, unexpected


def open_console(driver: WebDriver, origin: str) -> None:
    driver.origin = origin
    driver.get(f"{origin}/console")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{origin}/console")
    driver.get_log("browser")  # what earlier pages logged is not this test's
    driver.get_log("performance")


def _assert_stayed_local(driver: WebDriver, origin: str) -> None:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    assert urls, "the network log recorded nothing: the check would be empty"
    outside = [u for u in urls if not (u.startswith(f"{origin}/") or u.startswith("blob:") or u.startswith("data:"))]
    assert not outside, outside


# -- what the tests do on the page ---------------------------------------------------------------------------


def wait_for(driver: WebDriver, condition, what: str):
    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(lambda d: condition(d))
    except TimeoutException:
        error = driver.find_element(By.ID, "error").text
        raise AssertionError(f"timed out waiting for {what}; the page's error: {error!r}") from None


def sign_in(driver: WebDriver, key: str) -> None:
    field = driver.find_element(By.ID, "api-key")
    field.send_keys(key, Keys.ENTER)  # the keyboard alone
    wait_for(driver, lambda d: d.find_element(By.ID, "workspace").is_displayed(), "the workspace")
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery-stats dd"), "the gallery panel")


def search(driver: WebDriver, crops: list[Path], *, cameras: str = "", top_k: int = 10) -> list[WebElement]:
    choose(driver, crops)
    for field, value in (("cameras", cameras), ("top-k", str(top_k))):
        element = driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    old = driver.find_elements(By.CSS_SELECTOR, "[data-results] > *")
    driver.find_element(By.ID, "search-button").click()  # the page hides its last error as the search starts

    def answered(d: WebDriver) -> bool:
        new = d.find_elements(By.CSS_SELECTOR, "[data-results] > *")
        return d.find_element(By.ID, "error").is_displayed() or bool(new and (not old or _stale(old[0])))

    wait_for(driver, answered, "new results")
    error = driver.find_element(By.ID, "error")
    assert not error.is_displayed(), error.text
    hits = driver.find_elements(By.CSS_SELECTOR, "[data-results] [data-hit]")
    wait_for(driver, lambda d: all(_image_loaded(d, h) for h in hits), "every hit's image")
    return hits


def choose(driver: WebDriver, crops: list[Path]) -> None:
    field = driver.find_element(By.ID, "crops")
    field.clear()  # chromedriver adds files to a multiple file input: the earlier choice goes first
    field.send_keys("\n".join(str(p) for p in crops))


def submit_expecting_error(driver: WebDriver, crop: Path) -> str:
    choose(driver, [crop])
    driver.find_element(By.ID, "search-button").click()
    return wait_for(driver, lambda d: d.find_element(By.ID, "error").text, "the error")


def _stale(element: WebElement) -> bool:
    try:
        element.is_enabled()
    except Exception:
        return True
    return False


def _image_loaded(driver: WebDriver, container: WebElement) -> bool:
    return driver.execute_script(
        "const i = arguments[0].querySelector('img'); return !!i && i.complete && i.naturalWidth > 0;", container
    )


def hit_ids(hits: list[WebElement]) -> list[int]:
    return [int(h.get_attribute("data-hit")) for h in hits]


def facts(element: WebElement) -> dict[str, str]:
    terms = element.find_elements(By.CSS_SELECTOR, "dt")
    values = element.find_elements(By.CSS_SELECTOR, "dd")
    return {t.text: v.text for t, v in zip(terms, values, strict=True)}


def screenshot(driver: WebDriver, name: str) -> None:
    folder = os.environ.get("REID_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


# -- the tests -------------------------------------------------------------------------------------------------


def test_console_answers_with_a_strict_content_security_policy(console):
    r = httpx.get(f"{console.url}/console")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = {part.split()[0]: part.split()[1:] for part in r.headers["content-security-policy"].split("; ")}
    assert csp["default-src"] == ["'none'"] and csp["script-src"] == ["'self'"] and csp["connect-src"] == ["'self'"]
    assert csp["img-src"] == ["'self'", "blob:"] and csp["frame-ancestors"] == ["'none'"]
    assert csp["form-action"] == ["'none'"]
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    assert "<script>" not in r.text and " style=" not in r.text  # nothing inline: the CSP would refuse it
    assets = set(re.findall(r'"(/console/static/[0-9a-f]+/[a-z.]+)"', r.text))
    assert {a.rsplit("/", 1)[1] for a in assets} == {"console.js", "console.css", "favicon.svg"}
    for asset in assets:
        got = httpx.get(f"{console.url}{asset}")
        assert got.status_code == 200 and got.headers["content-security-policy"] == r.headers["content-security-policy"]
        assert "immutable" in got.headers["cache-control"]
    assert httpx.get(f"{console.url}/console/static/0000/console.js").status_code == 404  # an old version is gone
    assert "/console" not in httpx.get(f"{console.url}/openapi.json").json()["paths"]  # not part of the API


def test_a_wrong_key_is_refused_in_words(page, console):
    open_console(page, console.url)
    page.expected_errors = ["401"]
    page.find_element(By.ID, "api-key").send_keys("not-the-key", Keys.ENTER)
    error = wait_for(page, lambda d: d.find_element(By.ID, "error").text, "the error")
    assert "The API key was not accepted" in error
    assert not page.find_element(By.ID, "workspace").is_displayed()
    assert page.execute_script("return sessionStorage.length") == 0
    assert "not-the-key" not in page.current_url


def test_search_with_one_crop_shows_hits_with_images_and_the_verdict(page, console):
    open_console(page, console.url)
    sign_in(page, READER)
    stats = facts(page.find_element(By.ID, "gallery-stats"))
    assert int(stats["Items"]) == len(console.items) + 3 and stats["Ready"].startswith("yes")
    assert page.execute_script("return sessionStorage.getItem('reid.console.apiKey')") == READER
    assert READER not in page.current_url and not page.get_cookies()
    query = console.items[0]
    hits = search(page, [query.path])
    assert hit_ids(hits)[0] == query.id  # its own image first
    first = facts(hits[0])
    assert first["Person"] == query.person and first["Camera"] == query.camera and first["Track"] == query.track
    assert float(first["Score"]) == pytest.approx(1.0, abs=1e-3)
    verdict = page.find_element(By.ID, "verdict").text
    assert verdict.startswith(f"Match: person {query.person}") and "1% false-alarm rate" in verdict
    assert f"threshold {TINY_THRESHOLD['score']:.3f}" in verdict
    groups = page.find_elements(By.CSS_SELECTOR, "[data-results] [data-track]")
    assert groups and groups[0].get_attribute("data-track") == query.track  # grouped by track, best first
    for group in groups:  # the answer's tracks, each holding its own hits
        track = group.get_attribute("data-track")
        assert {facts(h)["Track"] for h in group.find_elements(By.CSS_SELECTOR, "[data-hit]")} == {track or "—"}
    with httpx.Client(base_url=console.url, headers={"X-API-Key": READER}) as client:
        identity = client.get(f"/v1/tracks/{query.track}").json()["identity_id"]
    assert identity is not None and f"identity {identity}" in groups[0].find_element(By.TAG_NAME, "h3").text
    screenshot(page, "console-search.png")


def show_path(driver: WebDriver, hit: WebElement) -> list[WebElement]:
    """Open the path of ``hit`` with the keyboard; the path's steps, once their images are shown."""
    old = driver.find_elements(By.CSS_SELECTOR, "[data-timeline] [data-step]")
    hit.find_element(By.XPATH, ".//button[text()='Show path']").send_keys(Keys.ENTER)

    def shown(d: WebDriver) -> list[WebElement]:
        return (not old or _stale(old[0])) and d.find_elements(By.CSS_SELECTOR, "[data-timeline] [data-step]")

    steps = wait_for(driver, shown, "the path")
    wait_for(driver, lambda d: all(_image_loaded(d, s) for s in steps), "the path's images")
    assert driver.switch_to.active_element.get_attribute("id") == "timeline-title"
    return steps


def test_camera_filter_and_the_identitys_path_across_cameras(page, console):
    open_console(page, console.url)
    sign_in(page, READER)
    timeline = console.linked["timeline"]
    first, later = timeline[0], next(e for e in timeline if e["camera_id"] != timeline[0]["camera_id"])
    by_id = {i.id: i for i in console.items}
    query = by_id[first["best_item_id"]]
    hits = search(page, [query.path], cameras=f"{later['camera_id']}, nowhere", top_k=20)
    assert hits and {facts(h)["Camera"] for h in hits} == {later["camera_id"]}
    assert query.id not in hit_ids(hits)
    hint = page.find_element(By.ID, "unmatched")
    assert hint.is_displayed() and "camera nowhere" in hint.text and later["camera_id"] not in hint.text

    hit = next(h for h in hits if facts(h)["Track"] == later["track_id"])
    steps = show_path(page, hit)
    # the identity's timeline, every camera (not only the filtered one), in time order, one best crop per track
    assert [s.get_attribute("data-step-track") for s in steps] == [e["track_id"] for e in timeline]
    assert [int(s.get_attribute("data-step")) for s in steps] == [e["best_item_id"] for e in timeline]
    visits = page.find_elements(By.CSS_SELECTOR, "[data-timeline] > li h3")
    assert [v.text.split(" · ")[0] for v in visits] == [f"Camera {e['camera_id']}" for e in timeline]
    assert len({e["camera_id"] for e in timeline}) >= 2
    here = page.find_element(By.CSS_SELECTOR, "[data-timeline] [aria-current='step']")
    assert here.find_element(By.CSS_SELECTOR, "[data-step]").get_attribute("data-step-track") == later["track_id"]
    assert f"Identity {console.linked['identity_id']}" in page.find_element(By.ID, "timeline-note").text
    page.execute_script("document.getElementById('timeline-title').scrollIntoView()")
    screenshot(page, "console-timeline.png")


def test_a_path_without_an_identity_is_the_tracks_crops_or_the_persons_items(page, console):
    open_console(page, console.url)
    sign_in(page, READER)
    with httpx.Client(base_url=console.url, headers={"X-API-Key": READER}) as client:
        track = client.get(f"/v1/tracks/{console.unlinked.track}").json()
    assert track["identity_id"] is None  # no capture time: linking left it out
    hits = search(page, [console.unlinked.path], top_k=3)
    assert hit_ids(hits)[0] == console.unlinked.id
    steps = show_path(page, hits[0])
    assert [int(s.get_attribute("data-step")) for s in steps] == [i["id"] for i in track["items"]]
    assert "not linked to an identity" in page.find_element(By.ID, "timeline-note").text

    hits = search(page, [console.loose.path], top_k=3)
    assert hit_ids(hits)[0] == console.loose.id and facts(hits[0])["Track"] == "—"
    steps = show_path(page, hits[0])  # no track: the items labelled with its person
    assert [int(s.get_attribute("data-step")) for s in steps] == [console.loose.id]
    assert f"Person {console.loose.person}" in page.find_element(By.ID, "timeline-note").text


def search_requests(url: str) -> float:
    """POST /v1/search requests the server has answered with 200 (its Prometheus counter)."""
    text = httpx.get(f"{url}/metrics").text
    line = 'reid_http_requests_total{method="POST",route="/v1/search",status="200"} '
    return sum(float(row[len(line) :]) for row in text.splitlines() if row.startswith(line))


def test_search_with_two_crops_of_one_person_is_one_query(page, console):
    open_console(page, console.url)
    sign_in(page, READER)
    person = console.items[0].person
    first, second = [i for i in console.items if i.person == person and i.camera != console.items[0].camera][:2]
    before = search_requests(console.url)
    hits = search(page, [first.path, second.path], top_k=20)
    assert search_requests(console.url) == before + 1  # both crops in one request: one query, pooled by the server
    assert {first.id, second.id} <= set(hit_ids(hits))
    assert facts(hits[0])["Person"] == person
    assert "2 crops, searched as one query" in page.find_element(By.ID, "results-note").text
    previews = page.find_elements(By.CSS_SELECTOR, "#previews img")
    assert len(previews) == 2


def test_an_admin_erases_an_item_after_confirming(page, console):
    open_console(page, console.url)
    sign_in(page, ADMIN)
    target = console.erasable
    hits = search(page, [target.path], top_k=3)
    assert hit_ids(hits)[0] == target.id
    erase = hits[0].find_element(By.CSS_SELECTOR, "[data-erase]")
    erase.click()
    dialog = page.find_element(By.ID, "erase-dialog")
    assert dialog.is_displayed() and f"Gallery item {target.id}" in dialog.text
    page.switch_to.active_element.send_keys(Keys.ENTER)  # the focus starts on Cancel
    assert not dialog.is_displayed() and page.find_elements(By.CSS_SELECTOR, f"[data-hit='{target.id}']")
    with httpx.Client(base_url=console.url, headers={"X-API-Key": ADMIN}) as client:
        assert client.get(f"/v1/gallery/{target.id}").status_code == 200  # cancelled: nothing happened
        erase.click()
        page.find_element(By.ID, "erase-confirm").click()
        receipt = wait_for(
            page, lambda d: d.find_elements(By.CSS_SELECTOR, f"[data-receipt='{target.id}']"), "a receipt"
        )
        assert f"Erased item {target.id} (person erase-me, camera 9)" in receipt[0].text
        assert "reference" in receipt[0].text
        assert not page.find_elements(By.CSS_SELECTOR, f"[data-hit='{target.id}']")
        assert not page.find_elements(By.CSS_SELECTOR, f"[data-track='{target.track}']")  # its track had only it
        assert client.get(f"/v1/gallery/{target.id}").status_code == 404
    wait_for(
        page, lambda d: facts(d.find_element(By.ID, "gallery-stats"))["Items"] == str(len(console.items) + 2), "count"
    )


def test_a_read_key_cannot_erase_and_is_told_why(page, console):
    open_console(page, console.url)
    page.expected_errors = ["403"]
    sign_in(page, READER)
    query = console.items[-1]
    hits = search(page, [query.path], top_k=3)
    hits[0].find_element(By.CSS_SELECTOR, "[data-erase]").click()
    page.find_element(By.ID, "erase-confirm").click()
    error = wait_for(page, lambda d: d.find_element(By.ID, "error").text, "the error")
    assert "erasing needs an admin key" in error
    assert not any(b.is_displayed() for b in page.find_elements(By.CSS_SELECTOR, "[data-erase]"))
    with httpx.Client(base_url=console.url, headers={"X-API-Key": READER}) as client:
        assert client.get(f"/v1/gallery/{query.id}").status_code == 200


def test_a_file_that_is_not_an_image_is_refused_in_words(page, console):
    open_console(page, console.url)
    page.expected_errors = ["415"]
    sign_in(page, READER)
    error = submit_expecting_error(page, console.not_an_image)
    assert "not an image the server can read" in error and "JPEG, PNG or WEBP" in error


def test_every_control_is_labelled_and_the_page_fits_a_phone(page, console):
    open_console(page, console.url)
    sign_in(page, READER)
    search(page, [console.items[0].path])
    unlabelled = page.execute_script(
        """return [...document.querySelectorAll('input, button, select, textarea')].filter((c) => {
             const named = c.labels && c.labels.length ? c.labels[0].textContent : (c.getAttribute('aria-label') || c.textContent);
             return !named.trim();
           }).map((c) => c.outerHTML);"""
    )
    assert not unlabelled
    for width, height in ((1280, 800), (390, 844)):
        page.set_window_size(width, height)
        overflow = page.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{overflow}px wider than a {width}x{height} window"
    screenshot(page, "console-phone.png")


def test_a_saved_key_survives_a_reload_and_sign_out_forgets_it(page, console):
    open_console(page, console.url)
    sign_in(page, READER)
    page.refresh()
    wait_for(page, lambda d: d.find_element(By.ID, "workspace").is_displayed(), "the workspace after a reload")
    page.find_element(By.ID, "sign-out").click()
    assert page.find_element(By.ID, "login").is_displayed()
    assert page.execute_script("return sessionStorage.length") == 0


def test_a_time_window_keeps_only_what_was_seen_in_it(page, console):
    open_console(page, console.url)
    sign_in(page, READER)
    query = console.items[0]
    times = sorted(i.captured_at for i in console.items)
    start, end = times[len(times) // 4], times[3 * len(times) // 4]
    for field, seconds in (("time-from", start), ("time-to", end)):
        page.execute_script(
            """const d = new Date(arguments[1] * 1000), p = (n) => String(n).padStart(2, '0');
               arguments[0].value = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T` +
                                    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;""",
            page.find_element(By.ID, field),
            seconds,
        )
    hits = search(page, [query.path], top_k=50)
    by_id = {i.id: i for i in console.items}
    assert hits and all(start <= by_id[i].captured_at <= end for i in hit_ids(hits))
    assert len(hits) == sum(start <= i.captured_at <= end for i in console.items)


def test_values_from_clients_are_shown_as_text(page, faulty):
    open_console(page, faulty.url)
    sign_in(page, ADMIN)
    hits = search(page, [faulty.hostile])
    shown = facts(hits[0])
    assert shown["Person"] == HOSTILE and shown["Camera"] == HOSTILE
    assert page.title.startswith("Person search")  # the onerror never ran
    assert not page.find_elements(By.CSS_SELECTOR, "[onerror]")
    assert len(hits[0].find_elements(By.TAG_NAME, "img")) == 1  # its thumbnail, nothing injected


def test_a_busy_service_and_a_large_upload_are_explained(page, faulty):
    page.expected_errors = ["503", "413"]
    open_console(page, faulty.url)
    sign_in(page, ADMIN)
    faulty.embedder.fault = "unavailable"
    try:
        error = submit_expecting_error(page, faulty.hostile)
    finally:
        faulty.embedder.fault = None
    assert "not ready or is busy right now. Try again in 1 second." in error
    error = submit_expecting_error(page, faulty.too_large)
    assert f"the server accepts at most {SMALL_UPLOAD // 1024} KB in one request" in error
    assert search(page, [faulty.hostile])  # and the page still works

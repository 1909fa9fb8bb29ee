"""The HTTP service with a real client: auth, limits, bad JSON, unknown ids, batching, input validation at the API
boundary, the write key's sources (`muses serve`); and the search page in a real headless Chromium (skipped, saying
why, where no browser can be installed). The ``store`` fixture is in ``conftest.py``."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from service_data import KEY

from muses.errors import InputError
from muses.service import QueryBatcher, ServiceLimits, create_app, load_api_key
from muses.store import MemoryStore


@pytest.fixture(scope="module")
def client(store: MemoryStore) -> Iterator[TestClient]:
    limits = ServiceLimits(max_request_bytes=20_000, max_documents=4, max_document_chars=5_000, max_k=20)
    with TestClient(create_app(store, KEY, limits)) as c:
        yield c


def test_health_stats_and_openapi(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"
    stats = client.get("/stats").json()
    assert stats["store"]["documents"] >= 3 and "query_batches" in stats["service"]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/zoom", "/documents", "/documents/{doc_id}", "/health", "/stats"} <= set(paths)


def test_search_and_zoom(client: TestClient) -> None:
    r = client.post("/search", json={"query": "where is water absorbed?", "scale": "sentence", "k": 2})
    assert r.status_code == 200
    top = r.json()["hits"][0]
    assert (top["id"], top["text"]) == ("bio", "Roots take up water from the soil.")
    r = client.post("/zoom", json={"query": "which river flows through Egypt?", "k_docs": 1})
    result = r.json()["results"][0]
    assert result["id"] == "geo" and result["sentences"][0]["highlights"]
    r = client.post("/search", json={"query": "rates", "filters": {"t": "b"}, "scale": "document"})
    assert [h["id"] for h in r.json()["hits"]] == ["bio"]


def test_writes_need_the_key(client: TestClient) -> None:
    doc = {"documents": [{"id": "new", "text": "Bees pollinate flowers."}]}
    assert client.post("/documents", json=doc).status_code == 401
    assert client.post("/documents", json=doc, headers={"X-API-Key": "wrong"}).status_code == 401
    r = client.post("/documents", json=doc, headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.json()["ids"] == ["new"]
    assert client.post("/documents", json=doc, headers={"X-API-Key": KEY}).status_code == 400  # duplicate id
    assert client.get("/documents/new").json()["text"] == "Bees pollinate flowers."
    assert client.delete("/documents/new").status_code == 401
    assert client.delete("/documents/new", headers={"X-API-Key": KEY}).status_code == 200
    r = client.get("/documents/new")
    assert r.status_code == 404 and "unknown document id" in r.json()["detail"]
    assert client.delete("/documents/new", headers={"X-API-Key": KEY}).status_code == 404


def test_read_only_without_a_key(store: MemoryStore) -> None:
    with TestClient(create_app(store, None)) as c:
        r = c.post("/documents", json={"documents": [{"text": "x"}]}, headers={"X-API-Key": "anything"})
        assert r.status_code == 403 and "MUSES_API_KEY" in r.json()["detail"]


def test_limits_and_bad_requests(client: TestClient) -> None:
    h = {"X-API-Key": KEY}
    r = client.post("/documents", json={"documents": [{"text": "x " * 12_000}]}, headers=h)
    assert r.status_code == 413 and "limit of 20000 bytes" in r.json()["detail"]
    r = client.post("/documents", json={"documents": [{"text": "y" * 6_000}]}, headers=h)
    assert r.status_code == 413 and "limit of 5000" in r.json()["detail"]
    r = client.post("/documents", json={"documents": [{"text": "a."}] * 5}, headers=h)
    assert r.status_code == 413 and "limit of 4" in r.json()["detail"]
    r = client.post("/search", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "json" in str(r.json()["detail"]).lower()
    assert client.post("/search", json={"query": "x", "k": 50}).status_code == 422
    assert client.post("/search", json={"query": "   "}).status_code == 422
    assert client.post("/search", json={"query": "x", "scale": "paragraph"}).status_code == 422
    assert client.post("/search", json={"query": "x", "bogus": 1}).status_code == 422
    r = client.post("/search", json={"query": "x", "dim": 384})
    assert r.status_code == 400 and "not available in this store" in r.json()["detail"]
    r = client.post("/documents", json={"documents": [{"text": "  "}]}, headers=h)
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    for field, value in [("zoom_docs", 21), ("k", 2**70), ("dim", 2**70), ("zoom_docs", 0)]:
        r = client.post("/search", json={"query": "x", field: value})
        assert r.status_code == 422 and field in json.dumps(r.json()["detail"]), (field, r.text)
    r = client.post("/zoom", json={"query": "x", "k_sentences": 10**6})
    assert r.status_code == 422 and "k_sentences" in r.json()["detail"]


def _post_raw(client: TestClient, path: str, body: str, headers: dict[str, str] | None = None) -> Any:
    """POST ``body`` as it is: JSON escapes such as a lone surrogate ``\\ud800`` reach the server unchanged."""
    return client.post(path, content=body.encode(), headers={"Content-Type": "application/json", **(headers or {})})


def _names(r: Any, field: str) -> bool:
    """A 422 whose detail names ``field`` (in a location or in the message)."""
    return bool(r.status_code == 422 and field in json.dumps(r.json()["detail"]))


def test_a_bad_query_in_a_batch_fails_alone() -> None:
    gate = threading.Event()
    calls: list[list[str]] = []

    def encode(texts: Sequence[str]) -> list[str]:
        gate.wait(2)  # hold the first batch so that the others queue up behind it
        calls.append(list(texts))
        if "bad" in texts:
            raise InputError("query 'bad' cannot be encoded")
        return [t.upper() for t in texts]

    b: QueryBatcher[str] = QueryBatcher(encode, max_batch=32)
    texts = [f"q{i}" for i in range(10)] + ["bad"] + [f"q{i}" for i in range(10, 20)]
    with ThreadPoolExecutor(len(texts)) as pool:
        futures = {t: pool.submit(b.encode, t) for t in texts}
        time.sleep(0.3)
        gate.set()
        with pytest.raises(InputError, match="'bad'"):
            futures["bad"].result()
        assert {t: f.result() for t, f in futures.items() if t != "bad"} == {t: t.upper() for t in texts if t != "bad"}
    b.close()
    assert any("bad" in c and len(c) > 1 for c in calls), calls  # it was batched with good ones, and failed alone


def test_concurrent_good_and_bad_searches(client: TestClient) -> None:
    good = '{"query": "where is water absorbed?", "scale": "document", "k": 1}'
    bad = '{"query": "water \\ud800", "scale": "document", "k": 1}'  # a lone surrogate, as a JSON escape
    bodies = ([good] * 8 + [bad] * 2) * 4
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda body: _post_raw(client, "/search", body), bodies))
    for body, r in zip(bodies, responses, strict=True):
        if body == good:
            assert r.status_code == 200 and r.json()["hits"][0]["id"] == "bio", r.text
        else:
            assert _names(r, "query") and "surrogate" in r.text, r.text


def test_ids_with_slashes_are_routable(client: TestClient) -> None:
    h = {"X-API-Key": KEY}
    ids = ["a/b", "../etc/passwd", "dir/sub/ x?y#z"]  # no "%": TestClient decodes the path twice
    r = client.post(
        "/documents", json={"documents": [{"id": i, "text": f"Note {n}."} for n, i in enumerate(ids)]}, headers=h
    )
    assert r.status_code == 200 and r.json()["ids"] == ids
    for n, i in enumerate(ids):
        url = "/documents/" + quote(i, safe="")
        r = client.get(url)
        assert r.status_code == 200 and r.json()["id"] == i and r.json()["text"] == f"Note {n}.", (url, r.text)
        assert client.delete(url, headers=h).json()["deleted"] == i
        assert client.get(url).status_code == 404


def test_ids_are_checked_at_the_boundary(client: TestClient) -> None:
    h = {"X-API-Key": KEY}
    for bad_id in ["", "x" * 600, "a\x00b", "..", 7]:
        r = client.post("/documents", json={"documents": [{"id": bad_id, "text": "Bees."}]}, headers=h)
        assert _names(r, "id"), (bad_id, r.text)
    for url in ["/documents/%2E%2E", "/documents/a%00b", "/documents/" + "x" * 600, "/documents/"]:
        assert _names(client.get(url), "doc_id"), url
        assert _names(client.delete(url, headers=h), "doc_id"), url


def test_filters_metadata_and_texts_are_checked_at_the_boundary(store: MemoryStore) -> None:
    h, before = {"X-API-Key": KEY}, len(store)
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    with TestClient(create_app(store, KEY)) as c:
        many = {f"k{i}": i for i in range(5_000)}
        for path in ("/search", "/zoom"):
            for filters in (many, {"year": 2**70}, {"year": [2**64]}, {"bad key!": 1}, {"k": deep}):
                r = c.post(path, json={"query": "water", "filters": filters})
                assert _names(r, "filters"), (path, r.text[:300])
            assert _names(_post_raw(c, path, '{"query": "x", "filters": {"k": "\\udc80"}}'), "filters")
        docs: list[tuple[dict[str, Any], str]] = [
            ({"text": "Bees.", "metadata": {"d": deep}}, "metadata"),
            ({"text": "Bees.", "metadata": {"big": "x" * 70_000}}, "metadata"),
            ({"text": "Bees.", "metadata": {"s": "\ud800"}}, "metadata"),
            ({"text": "Bees \udfff."}, "text"),
            ({"id": "y" * 513, "text": "Bees."}, "id"),
        ]
        for doc, field in docs:  # ensure_ascii: a lone surrogate travels as a JSON escape
            r = _post_raw(c, "/documents", json.dumps({"documents": [doc]}), h)
            assert _names(r, field), (field, r.text[:300])
    assert len(store) == before  # nothing reached the store


def test_unexpected_errors_are_one_line_without_a_traceback(store: MemoryStore) -> None:
    class Broken:
        """A store whose search fails in a way nobody planned for."""

        def encode_queries(self, texts: Sequence[str]) -> list[str]:
            return list(texts)

        def search(self, *args: object) -> None:
            raise RuntimeError("secret internals\nTraceback (most recent call last): ...")

    with TestClient(create_app(cast(MemoryStore, Broken())), raise_server_exceptions=False) as c:
        r = c.post("/search", json={"query": "water"})
    assert r.status_code == 500 and "\n" not in r.json()["detail"], r.text
    assert "Traceback" not in r.text and "secret" not in r.text and "RuntimeError" in r.text


# ---------------------------------------------------------------------------------------------- muses serve's key


def _serve(monkeypatch: pytest.MonkeyPatch, store: MemoryStore, *args: str) -> tuple[Any, list[str | None]]:
    """Run ``muses serve ARGS`` with the store given and uvicorn stubbed out: ``(result, keys the app got)``."""
    import uvicorn
    from typer.testing import CliRunner

    import muses.cli_index
    import muses.service
    from muses.cli import app

    keys: list[str | None] = []
    monkeypatch.setattr(muses.cli_index, "_open", lambda *_: store)
    monkeypatch.setattr(muses.service, "create_app", lambda s, key, limits: keys.append(key) or object())
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    return CliRunner().invoke(app, ["serve", *args]), keys


def test_serve_takes_the_key_from_a_file_or_the_environment(
    monkeypatch: pytest.MonkeyPatch, store: MemoryStore, tmp_path: Path
) -> None:
    monkeypatch.delenv("MUSES_API_KEY", raising=False)
    result, keys = _serve(monkeypatch, store, "--api-key", "secret")
    assert result.exit_code == 2 and "No such option" in result.output and keys == []
    result, keys = _serve(monkeypatch, store)
    assert result.exit_code == 0 and keys == [None] and "writes off" in result.output
    (tmp_path / "key").write_text("  s3cret-key \n")
    result, keys = _serve(monkeypatch, store, "--api-key-file", str(tmp_path / "key"))
    assert result.exit_code == 0 and keys == ["s3cret-key"] and "writes on" in result.output
    monkeypatch.setenv("MUSES_API_KEY", "from-env")
    result, keys = _serve(monkeypatch, store)
    assert result.exit_code == 0 and keys == ["from-env"]
    (tmp_path / "empty").write_text(" \n")
    (tmp_path / "latin").write_bytes(b"caf\xe9")
    for name, problem in [
        ("missing", "cannot read"),
        ("empty", "is empty"),
        ("latin", "not ASCII"),
        (".", "cannot read"),
    ]:
        result, keys = _serve(monkeypatch, store, "--api-key-file", str(tmp_path / name))
        assert result.exit_code == 2 and problem in result.output and keys == [], result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_load_api_key() -> None:
    assert load_api_key(environ={}) is None
    assert load_api_key(environ={"MUSES_API_KEY": " k \n"}) == "k"
    with pytest.raises(InputError, match="printable ASCII"):
        load_api_key(environ={"MUSES_API_KEY": "k\u00e9y"})


def test_concurrent_queries_are_encoded_in_batches() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def encode(texts: list[str]) -> list[str]:
        gate.wait(2)  # hold the first batch so that the others queue up behind it
        calls.append(len(texts))
        return [t.upper() for t in texts]

    b: QueryBatcher[str] = QueryBatcher(encode, max_batch=32)
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(b.encode, f"q{i}") for i in range(16)]
        time.sleep(0.3)
        gate.set()
        assert [f.result() for f in futures] == [f"Q{i}" for i in range(16)]
    b.close()
    assert sum(calls) == 16 and len(calls) < 16 and max(calls) > 1


# ---------------------------------------------------------------------------------------------- the web page


EMOJI_DOC = {  # an id that needs percent-encoding, and emoji (two UTF-16 units each) before the matched words
    "id": "notes/🐝 bees?#%41",
    "text": "Our garden 🌼🌻🌷 is full of colour. Honey bees 🐝🐝 dance to show the hive where the flowers grow.",
}
EMOJI_QUERY = "how do bees show the hive where the flowers are?"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
)


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serving(store: MemoryStore) -> Iterator[str]:
    """The service over ``store`` in a real uvicorn on a free local port; yields its base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store, KEY), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert server.started, "uvicorn did not start within 30 s"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def _headless_chromium(found: tuple[str, str], profile: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The installed Chromium, driven by the installed chromedriver: Selenium Manager (which reaches outside hosts
    to look for drivers) must never run, and the browser's own background traffic is switched off."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    def no_selenium_manager(*_: object) -> dict[str, str]:
        raise AssertionError("Selenium Manager ran; the test must start the installed chromedriver itself")

    monkeypatch.setattr(SeleniumManager, "binary_paths", no_selenium_manager)
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _search_page(driver: Any, query: str, scale: str) -> dict[str, Any]:
    """Search on the page (already loaded) at ``scale``; the first result box of each document id."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    Select(driver.find_element(By.ID, "scale")).select_by_value(scale)
    driver.execute_script("document.getElementById('status').textContent = '';")
    box = driver.find_element(By.ID, "q")
    box.clear()
    box.send_keys(query, Keys.ENTER)
    status = driver.find_element(By.ID, "status")
    WebDriverWait(driver, 60).until(lambda _: "results in" in status.text or "error" in status.text)
    assert "error" not in status.text, status.text
    boxes: dict[str, Any] = {}
    for b in driver.find_elements(By.CSS_SELECTOR, ".result"):
        boxes.setdefault(b.find_element(By.CSS_SELECTOR, ".meta").text.split(" · ")[0], b)
    return boxes


def _marked_words(text: str, span: Sequence[int], words: Sequence[Sequence[int]]) -> list[str]:
    """The words the page should mark: the API's code-point spans inside the sentence, without overlaps."""
    out, pos = [], span[0]
    for a, b in sorted(words):
        if a >= pos and b <= span[1]:
            out.append(text[a:b].strip())
            pos = b
    return out


def test_search_page_in_headless_chromium(store: MemoryStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = _chromium()
    if found is None:
        pytest.skip("no chromium + chromedriver here (make test installs them with apt-get when run as root)")
    from selenium.webdriver.common.by import By

    doc_id, text = EMOJI_DOC["id"], EMOJI_DOC["text"]
    store.add([EMOJI_DOC])
    try:
        [want] = [r for r in store.zoom(EMOJI_QUERY, k_docs=5, k_sentences=1) if r.id == doc_id]
        sentence = want.sentences[0]
        assert sentence.span is not None and sentence.highlights, "the store gave no words to highlight"
        assert any(ord(c) > 0xFFFF for c in text[: min(a for a, _ in sentence.highlights)])  # emoji before them
        hit = next(h for h in store.search(EMOJI_QUERY, "sentence", k=5) if h.id == doc_id)  # its best sentence
        with _serving(store) as url, _headless_chromium(found, tmp_path / "chrome-profile", monkeypatch) as driver:
            driver.get(url + "/")
            bio = _search_page(driver, "where is water absorbed?", "zoom")["bio"]
            assert bio.find_element(By.CSS_SELECTOR, "mark.sentence").text == "Roots take up water from the soil."

            mark = _search_page(driver, EMOJI_QUERY, "zoom")[doc_id].find_element(By.CSS_SELECTOR, "mark.sentence")
            a, b = sentence.span
            assert mark.text == text[a:b].strip()
            words = [w.text for w in mark.find_elements(By.CSS_SELECTOR, "mark.word")]
            assert words == _marked_words(text, sentence.span, sentence.highlights)

            box = _search_page(driver, EMOJI_QUERY, "sentence")[doc_id]  # fetches /documents/<percent-encoded id>
            assert box.find_element(By.CSS_SELECTOR, "mark.sentence").text == hit.text.strip()
            assert box.find_element(By.CSS_SELECTOR, ".doc").text == text
    finally:
        store.delete([doc_id])


def test_page_is_packaged() -> None:
    from importlib import resources

    html = resources.files("muses.service").joinpath("static/index.html").read_text(encoding="utf-8")
    assert 'id="q"' in html and "mark.sentence" in html
    assert Path(str(resources.files("muses.service"))).is_dir()

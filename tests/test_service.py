"""The HTTP service with a real client: auth, limits, bad JSON, unknown ids, batching; and the search page in a
real headless Chromium (skipped, saying why, where no browser can be installed)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from muses.encoder import MultiScaleEncoder
from muses.service import QueryBatcher, ServiceLimits, create_app
from muses.store import MemoryStore, StoreConfig

KEY = "test-key"
DOCS = [
    {
        "id": "bio",
        "text": "Leaves make oxygen by photosynthesis. Roots take up water from the soil.",
        "metadata": {"t": "b"},
    },
    {"id": "fin", "text": "The stock market fell on Monday. Investors feared higher interest rates."},
    {"id": "geo", "text": "The Nile flows north through Egypt. It empties into the Mediterranean Sea."},
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, encoder: MultiScaleEncoder) -> MemoryStore:
    s = MemoryStore.create(tmp_path_factory.mktemp("svc") / "mem", encoder, StoreConfig(dim=128), model="default")
    s.add(DOCS)
    return s


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


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_search_page_in_headless_chromium(store: MemoryStore) -> None:
    found = _chromium()
    if found is None:
        pytest.skip("no chromium + chromedriver here (make test installs them with apt-get when run as root)")
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store, KEY), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        box = driver.find_element(By.ID, "q")
        box.send_keys("where is water absorbed?", Keys.ENTER)
        sentence = WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "mark.sentence")))
        assert sentence.text == "Roots take up water from the soil."
        words = sentence.find_elements(By.CSS_SELECTOR, "mark.word")
        assert words and all(w.text and w.text in sentence.text for w in words), [w.text for w in words]
        results = driver.find_elements(By.CSS_SELECTOR, ".result")
        assert results[0].find_element(By.CSS_SELECTOR, ".meta").text.startswith("bio")
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(10)


def test_page_is_packaged() -> None:
    from importlib import resources

    html = resources.files("muses.service").joinpath("static/index.html").read_text(encoding="utf-8")
    assert 'id="q"' in html and "mark.sentence" in html
    assert Path(str(resources.files("muses.service"))).is_dir()

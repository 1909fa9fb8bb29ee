"""Domain LoRA adapters and the AdapterCache, on the real all-MiniLM-L6-v2 with tiny adapters (rank 2).

LRU order and eviction, lazy loading, concurrent encodes while adapters are evicted, exact save/load round trips,
capacity 0 = the base model, routing, few-shot warm-up, adapter training with the project's trainer (resume), the
CLI and the service's stats, and the measurements of ``muses.adapters.measure``. The adapter bench built on them is
tested in tests/benchmarks/.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from muses.adapters import (
    AdapterCache,
    AdapterConfig,
    attach_adapter,
    list_adapters,
    load_adapter,
    loaded_adapters,
    remove_adapter,
    save_adapter,
)
from muses.adapters import cache as cache_module
from muses.adapters.lora import adapter_parameters, adapter_weights, read_adapter
from muses.adapters.router import centroid
from muses.encoder import MultiScaleEncoder
from muses.errors import InputError, ModelError

TINY = AdapterConfig(rank=2, alpha=4, target_modules=["query", "value"])
DOMAINS = {
    "bio": [
        "Cells divide by mitosis. The nucleus holds the chromosomes.",
        "Enzymes are proteins that speed up reactions in the body.",
        "The heart pumps blood through arteries and veins.",
        "Bacteria and viruses can cause infections and disease.",
    ],
    "geo": [
        "The river flows north into the sea. Its delta is fertile.",
        "Mountains cover the west of the country; the capital lies on the coast.",
        "The island has a tropical climate and a volcanic peak.",
        "The lake borders three countries and feeds a large river.",
    ],
    "tech": [
        "The processor executes instructions stored in memory.",
        "Software engineers compile source code into programs.",
        "The network router forwards packets between computers.",
        "Transistors on a silicon chip switch electric current.",
    ],
}
QUERIES = ["Which organ pumps blood?", "Where does the river end?", "How does a CPU run code?"]


def _make(enc: MultiScaleEncoder, key: str, folder: Path, seed: int) -> Path:
    """Attach a rank-2 adapter with random (non-zero) B, save it with its routing centroid, and detach it."""
    attach_adapter(enc, key, TINY)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter_parameters(enc, key).items():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    save_adapter(enc, key, folder / key, centroid=centroid(enc, DOMAINS[key]), n_texts=len(DOMAINS[key]))
    remove_adapter(enc, key)
    return folder / key


@pytest.fixture(scope="module")
def enc() -> MultiScaleEncoder:
    """A private encoder: the tests attach adapters to it (the session `encoder` fixture stays untouched)."""
    return MultiScaleEncoder.from_base()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, enc: MultiScaleEncoder) -> Path:
    folder = tmp_path_factory.mktemp("adapters")
    for seed, key in enumerate(DOMAINS):
        _make(enc, key, folder, seed)
    assert loaded_adapters(enc) == []
    return folder


@pytest.fixture
def clean(enc: MultiScaleEncoder) -> Iterator[MultiScaleEncoder]:
    """The private encoder, with every adapter detached again after the test."""
    yield enc
    for key in loaded_adapters(enc):
        remove_adapter(enc, key)


def test_capacity_zero_is_the_base_model(root: Path, clean: MultiScaleEncoder, encoder: MultiScaleEncoder) -> None:
    cache = AdapterCache(clean, root, capacity=0)
    docs = DOMAINS["bio"][:2]
    for key in (None, "bio", "base"):
        assert np.array_equal(cache.encode_queries(QUERIES, key=key), encoder.encode_queries(QUERIES))
        got = cache.encode_documents(docs, key=key, scales=("document", "sentence", "token"), dim=64)
        want = encoder.encode_documents(docs, scales=("document", "sentence", "token"), dim=64)
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(g.document, w.document) and np.array_equal(g.sentences, w.sentences)
            assert g.tokens is not None and w.tokens is not None and np.array_equal(g.tokens, w.tokens)
    assert loaded_adapters(clean) == [] and cache.resident == []
    s = cache.stats()
    # routed: 3 queries to 3 adapters, 2 bio documents to 1; explicit "bio": 2 requests; "base": 2 base requests
    assert (s["loads"], s["hits"], s["hit_rate"], s["misses"], s["base_requests"]) == (0, 0, 0.0, 3 + 1 + 2, 2)


def test_lru_order_eviction_and_lazy_load(
    root: Path, clean: MultiScaleEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real = cache_module.read_adapter

    def counting(folder: Path, **kwargs: object) -> object:
        reads.append(Path(folder).name)
        return real(folder, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cache_module, "read_adapter", counting)
    cache = AdapterCache(clean, root, capacity=2)
    assert cache.keys == ["bio", "geo", "tech"]
    assert loaded_adapters(clean) == [] and reads == []  # nothing is loaded until first use
    q = QUERIES[:1]
    cache.encode_queries(q, key="bio")
    assert reads == ["bio"] and cache.resident == ["bio"] and len(loaded_adapters(clean)) == 1
    cache.encode_queries(q, key="geo")
    cache.encode_queries(q, key="bio")  # a hit: bio becomes the most recently used
    assert reads == ["bio", "geo"] and cache.resident == ["geo", "bio"]
    cache.encode_queries(q, key="tech")  # full: evicts geo, the least recently used (tech takes over its slot)
    assert cache.resident == ["bio", "tech"] and len(loaded_adapters(clean)) == 2
    cache.encode_queries(q, key="geo")  # read from disk again, evicting bio
    assert reads == ["bio", "geo", "tech", "geo"] and cache.resident == ["tech", "geo"]
    s = cache.stats()
    assert (s["hits"], s["misses"], s["loads"], s["evictions"], s["hotswaps"]) == (1, 4, 4, 2, 2)
    assert s["hit_rate"] == 0.2 and set(s["memory_kb"]) == {"tech", "geo"}
    n_params = 6 * 2 * (2 * 384 + 384 * 2)  # 6 layers x (query, value) x (A [2, 384] + B [384, 2])
    assert s["memory_kb"]["geo"] == round(4 * n_params / 1024, 1)
    assert s["miss_latency_ms"]["max"] >= s["miss_latency_ms"]["p50"] > 0 and s["switch_overhead_pct"] > 0


def test_evicted_slot_reused_in_place_gives_the_adapter_outputs(
    root: Path, clean: MultiScaleEncoder, encoder: MultiScaleEncoder
) -> None:
    """A full cache overwrites the least recently used slot in place (PEFT hotswap): the outputs are exactly those
    of the adapter loaded on its own, whichever adapter the slot held before."""
    alone = {}
    for key in DOMAINS:
        one = AdapterCache(clean, root, capacity=1)
        alone[key] = one.encode_queries(QUERIES, key=key)
        one.clear()
    cache = AdapterCache(clean, root, capacity=1)
    for key in ["bio", "geo", "tech", "bio", "base", "geo"]:
        got = cache.encode_queries(QUERIES, key=key)
        if key != "base":
            assert np.array_equal(got, alone[key]), key
    assert cache.stats()["hotswaps"] == 4 and len(loaded_adapters(clean)) == 1
    cache.clear()
    # slots reserved up front: every load is a copy into a spare slot; the base model is untouched meanwhile
    reserved = AdapterCache(clean, root, capacity=2)
    assert reserved.reserve() > 0 and len(loaded_adapters(clean)) == 2 and reserved.resident == []
    assert np.array_equal(reserved.encode_queries(QUERIES, key="base"), encoder.encode_queries(QUERIES))
    for key in ["geo", "bio", "tech", "geo"]:
        assert np.array_equal(reserved.encode_queries(QUERIES, key=key), alone[key]), key
    s = reserved.stats()
    assert (s["loads"], s["hotswaps"], s["spare_slots"], len(loaded_adapters(clean))) == (4, 4, 0, 2)


def test_saved_adapter_reloaded_gives_identical_outputs(tmp_path: Path, clean: MultiScaleEncoder) -> None:
    attach_adapter(clean, "x", TINY)
    with torch.no_grad():
        for name, p in adapter_parameters(clean, "x").items():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    docs = DOMAINS["geo"][:2]
    before_q = clean.encode_queries(QUERIES, dim=64)
    before_d = clean.encode_documents(docs, scales=("document", "sentence", "token"))
    save_adapter(clean, "x", tmp_path / "x", centroid=centroid(clean, docs))
    remove_adapter(clean, "x")
    assert not np.array_equal(clean.encode_queries(QUERIES, dim=64), before_q)  # the adapter did change outputs
    assert {p.name for p in (tmp_path / "x").iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "muses_adapter.json",
    }
    assert load_adapter(clean, tmp_path / "x") == "x"
    assert np.array_equal(clean.encode_queries(QUERIES, dim=64), before_q)
    for a, b in zip(clean.encode_documents(docs, scales=("document", "sentence", "token")), before_d, strict=True):
        assert np.array_equal(a.document, b.document) and np.array_equal(a.sentences, b.sentences)
        assert a.tokens is not None and b.tokens is not None and np.array_equal(a.tokens, b.tokens)
    # Matryoshka dims compose: the 64-dim vector is the normalised prefix of the full one
    full = clean.encode_queries(QUERIES)[:, :64]
    assert np.allclose(before_q, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-6)
    # the folder is PEFT's own format: the bare Hugging Face model loads it with peft.PeftModel
    from peft import PeftModel
    from transformers import AutoModel

    bare = AutoModel.from_pretrained(str(clean.transformer.auto_model.config._name_or_path))
    peft_model = PeftModel.from_pretrained(bare, str(tmp_path / "x"))
    ours = adapter_weights(clean, "x")
    from peft import get_peft_model_state_dict

    theirs = get_peft_model_state_dict(peft_model)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_concurrent_encode_during_eviction(root: Path, clean: MultiScaleEncoder) -> None:
    """Threads encode with different keys while capacity 1 forces an eviction at nearly every switch: each result
    equals the single-threaded one for its key (no half-loaded or foreign adapter is ever seen)."""
    cache = AdapterCache(clean, root, capacity=1)
    keys = ["bio", "geo", "tech", "base"]
    texts = DOMAINS["tech"][:3]
    reference = {k: cache.encode_sentences(texts, key=k) for k in keys}
    assert not np.array_equal(reference["bio"], reference["geo"])
    results: list[tuple[str, np.ndarray]] = []
    errors: list[BaseException] = []

    def work(key: str) -> None:
        try:
            for _ in range(3):
                results.append((key, cache.encode_sentences(texts, key=key)))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in keys * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 3 * len(threads)
    assert all(np.array_equal(vecs, reference[k]) for k, vecs in results)
    assert cache.stats()["evictions"] >= 3 and len(loaded_adapters(clean)) <= 1


def test_router_picks_the_domain_and_routed_equals_explicit(root: Path, clean: MultiScaleEncoder) -> None:
    cache = AdapterCache(clean, root, capacity=3)
    assert cache.route(QUERIES) == ["bio", "geo", "tech"]
    routed = cache.encode_queries(QUERIES)
    explicit = np.stack(
        [cache.encode_queries([q], key=k)[0] for q, k in zip(QUERIES, ["bio", "geo", "tech"], strict=True)]
    )
    assert np.allclose(routed, explicit, atol=1e-6)
    high = AdapterCache(clean, root, capacity=3, min_similarity=1.01)  # nothing is that close: the base model
    assert high.route(QUERIES) == [None, None, None]
    per_request = AdapterCache(clean, root, capacity=3, routing="request")  # one adapter for the whole request
    request = ["Arteries carry blood from the heart.", "The liver makes enzymes.", "Where does the river end?"]
    assert cache.route(request)[2] == "geo" and per_request.route(request) == ["bio"] * 3
    assert np.array_equal(per_request.encode_queries(request), cache.encode_queries(request, key="bio"))


def test_warm_up_unseen_domain(root: Path, tmp_path: Path, clean: MultiScaleEncoder) -> None:
    cache = AdapterCache(clean, root, capacity=2)
    docs = [
        "The orchestra played a symphony. The violins carried the melody.",
        "The composer wrote an opera in three acts. It premiered in Vienna.",
        "Jazz musicians improvise over chord changes. The drummer keeps time.",
    ]
    with pytest.raises(InputError, match="1 to 10 steps"):
        cache.warm_up("music", docs, steps=11, folder=tmp_path / "m0")
    base_queries = cache.encode_queries(QUERIES, key="base")
    result = cache.warm_up("music", docs, steps=4, init="zero", folder=tmp_path / "music")
    assert result.steps == 4 and len(result.losses) == 4 and result.init_from is None
    assert not any(m.training for m in clean.modules())  # no dropout in what it encodes next
    np.testing.assert_array_equal(cache.encode_queries(QUERIES, key="base"), base_queries)  # as before it
    assert result.losses[-1] < result.losses[0]
    b = [p for n, p in adapter_parameters(clean, "music").items() if "lora_B" in n]
    assert all(float(p.abs().sum()) > 0 for p in b)  # trained away from the zero init (= the base)
    assert "music" in cache.resident and "music" in cache.keys
    assert cache.route(["The pianist played a sonata by the composer."]) == ["music"]
    assert list_adapters(tmp_path)[0].key == "music"
    # from the nearest adapter: the geography adapter's weights are the start
    near = cache.warm_up("rivers", DOMAINS["geo"][:3], steps=1, init="nearest", folder=tmp_path / "rivers")
    assert near.init_from == "geo"
    pairs = [("what flows into the sea?", DOMAINS["geo"][0]), ("what is volcanic?", DOMAINS["geo"][2])]
    assert cache.warm_up("geo-qa", pairs, steps=2, init="zero", folder=tmp_path / "geo-qa").steps == 2


def test_errors_name_the_problem(root: Path, clean: MultiScaleEncoder, tmp_path: Path) -> None:
    cache = AdapterCache(clean, root, capacity=1)
    with pytest.raises(InputError, match="no adapter 'nope'; known: bio, geo, tech"):
        cache.encode_queries(QUERIES, key="nope")
    with pytest.raises(InputError, match="capacity"):
        AdapterCache(clean, root, capacity=-1)
    with pytest.raises(ModelError, match="does not exist"):
        list_adapters(tmp_path / "missing")
    with pytest.raises(ModelError, match=r"no adapter_config\.json"):
        read_adapter(tmp_path)
    with pytest.raises(ValidationError, match="not usable"):
        AdapterConfig(key="bad key!")
    with pytest.raises(ValidationError, match="reserved"):
        AdapterConfig(key="base")
    with pytest.raises(ValidationError, match="rnak"):
        AdapterConfig.model_validate({"rnak": 4})
    meta = json.loads((root / "bio" / "muses_adapter.json").read_text())
    (tmp_path / "other").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / "other" / name).write_bytes((root / "bio" / name).read_bytes())
    (tmp_path / "other" / "muses_adapter.json").write_text(json.dumps({**meta, "base_fingerprint": "0" * 16}))
    with pytest.raises(ModelError, match="another base model"):
        AdapterCache(clean, {"other": tmp_path / "other"})
    (tmp_path / "dup").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "muses_adapter.json"):
        (tmp_path / "dup" / name).write_bytes((root / "bio" / name).read_bytes())
    (tmp_path / "dup2").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "muses_adapter.json"):
        (tmp_path / "dup2" / name).write_bytes((root / "bio" / name).read_bytes())
    with pytest.raises(ModelError, match="in both"):
        list_adapters(tmp_path)


def test_adapter_training_with_the_trainer_resumes(tmp_path: Path) -> None:
    """Adapter mode of the trainer: base and heads frozen, only LoRA weights move; an interrupted run resumes to
    the same adapter as an uninterrupted one; best/ is an adapter folder the cache serves."""
    from muses.training.config import TrainConfig
    from muses.training.data import load_training_data
    from muses.training.trainer import Trainer

    raw = {
        "steps": 4,
        "docs_per_batch": 3,
        "eval_every": 2,
        "checkpoint_every": 2,
        "seed": 5,
        "task_weights": {"hierarchy": 1.0, "stsb": 0.0, "scifact": 0.0, "ict": 1.0},
        "eval_at_start": False,
        "optim": {"lr": 1e-3},
        "model": {"adapter": {"key": "geo-tiny", "rank": 2, "target_modules": ["query", "value"]}},
        "data": {
            "wikipedia_articles": 6,
            "wikipedia_topics": ["Geography"],
            "ict": True,
            "stsb": False,
            "scifact": False,
            "dev_stsb_pairs": 0,
            "dev_wikipedia_articles": 3,
            "dev_scifact_distractors": None,
            "max_doc_tokens": 48,
        },
        "loss": {"tokens_per_batch": 16},
    }
    cfg = TrainConfig.model_validate({**raw, "output_dir": str(tmp_path / "straight")})
    data = load_training_data(cfg)
    assert {d.metadata["topic"] for d in data.documents} == {"Geography"} and len(data.ict) >= 2
    straight = Trainer(cfg, data)
    frozen = {n: p.detach().clone() for n, p in straight.encoder.named_parameters() if "lora_" not in n}
    straight.train(progress=False)
    assert all(torch.equal(p, frozen[n]) for n, p in straight.encoder.named_parameters() if "lora_" not in n)
    final = adapter_weights(straight.encoder, "geo-tiny")
    assert any(float(v.abs().sum()) > 0 for k, v in final.items() if "lora_B" in k)

    cfg2 = TrainConfig.model_validate({**raw, "output_dir": str(tmp_path / "resumed")})
    Trainer(cfg2, data).train(progress=False, stop_after=2)
    assert (tmp_path / "resumed" / "checkpoint" / "adapter" / "adapter_model.safetensors").is_file()
    resumed = Trainer(cfg2, data)
    resumed.train(progress=False)
    again = adapter_weights(resumed.encoder, "geo-tiny")
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)

    [info] = list_adapters(tmp_path / "straight")
    assert info.key == "geo-tiny" and info.path == tmp_path / "straight" / "best" and info.rank == 2
    cache = AdapterCache(MultiScaleEncoder.from_base(), tmp_path / "straight", capacity=1)
    assert cache.route(["The river delta lies on the coast of the sea."]) == ["geo-tiny"]
    assert cache.encode_queries(QUERIES[:1], key="geo-tiny").shape == (1, 384)


def test_cli_list_and_service_stats(root: Path, clean: MultiScaleEncoder, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from muses.cli import app
    from muses.service import create_app
    from muses.store import MemoryStore, StoreConfig

    out = CliRunner().invoke(app, ["adapters", "list", str(root), "--json"])
    assert out.exit_code == 0, out.output
    assert [a["key"] for a in json.loads(out.output)] == ["bio", "geo", "tech"]
    missing = CliRunner().invoke(app, ["adapters", "list", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "does not exist" in missing.output

    cache = AdapterCache(clean, root, capacity=1)
    cache.encode_queries(QUERIES)
    store = MemoryStore.create(tmp_path / "mem", MultiScaleEncoder.from_base(), StoreConfig(dim=64), model="default")
    with TestClient(create_app(store, None, adapters=cache)) as client:
        stats = client.get("/stats").json()["adapters"]
    assert stats["capacity"] == 1 and stats["misses"] == 3 and stats["evictions"] == 2
    assert set(stats) >= {"hit_rate", "miss_latency_ms", "memory_kb", "switch_overhead_pct"}


def test_measure_router_accuracy_and_adapter_overhead(root: Path, clean: MultiScaleEncoder) -> None:
    """muses.adapters.measure: the router's share right per text and per group; the timed work of each adapter."""
    from muses.adapters.measure import adapter_overhead, router_accuracy

    cache = AdapterCache(clean, root, capacity=3)
    request = ["Arteries carry blood from the heart.", "The liver makes enzymes.", "Where does the river end?"]
    acc = router_accuracy(cache, {"bio": request, "geo": QUERIES[1:], "tech": []}, group_size=3)
    assert acc["bio"]["groups"] == 1.0 and acc["bio"]["texts"] <= 2 / 3  # the group goes to bio, its 3rd text to geo
    assert acc["geo"]["texts"] == 0.5 and "tech" not in acc  # QUERIES route to bio, geo, tech; no texts: skipped
    calls: list[str] = []

    def work(key: str) -> None:
        calls.append(key)
        cache.encode_queries(QUERIES[:1], key=key)

    out = adapter_overhead(cache, ["bio"], work, repeats=2)
    assert set(out) == {"bio", "base_ms"} and out["base_ms"] > 0 and calls == ["base", "bio"] * 2
    assert cache.resident == ["bio"]  # loaded before the clock started


def test_inverse_cloze_pairs_hold_out_a_sentence() -> None:
    from muses.text import make_document
    from muses.training.data import held_out_sentence, inverse_cloze_pairs

    text = (
        "Alpha is the first letter of the Greek alphabet. It has the value one in the system of Greek numerals. "
        "Beta comes right after it in the order of the alphabet. Short one."
    )
    doc = make_document(text, id="a")
    pairs = inverse_cloze_pairs([doc, make_document("Too short. Two sentences.", id="b")], seed=0)
    assert len(pairs) == 1
    query, rest = pairs[0]
    assert query in doc.sentence_texts()[1:3] and query not in rest and rest.startswith("Alpha is the first letter")
    assert held_out_sentence(doc, np.random.default_rng(0)) == pairs[0]

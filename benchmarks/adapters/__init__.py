"""The domain-shift experiment of docs/adapters.md: domain LoRA adapters served from an LRU AdapterCache.

Run from the repository root::

    python -m benchmarks.adapters --data-dir ../shared/data --out docs/reports/adapters --work-dir runs/adapters
    python -m benchmarks.adapters --config configs/bench/adapters/quick.yaml --out runs/bench-adapters-quick \\
        --work-dir runs/bench-adapters-quick/adapters
    python -m benchmarks.adapters --out docs/reports/adapters --render-only   # adapters.md from results.json

The run's inputs are YAML: a profile of sizes (``configs/bench/adapters/*.yaml``, ``--config``,
:class:`~benchmarks.adapters.settings.BenchSettings`) and one training recipe per domain
(``configs/adapters/<domain>.yaml``, ``--recipes``). It writes ``<out>/results.json`` and the report
``<out>/adapters.md``. Adapters already trained under ``--work-dir`` are reused (an interrupted training resumes).

Modules: :mod:`.settings` (profile and recipes), :mod:`.domains` (evaluation data), :mod:`.training` (train and
merge the adapters), :mod:`.traffic` (requests through the cache), :mod:`.metrics` (quality, retention),
:mod:`.run` (the whole run), :mod:`.report` (the markdown), ``__main__`` (the command line). The cache itself, its
router and the forward-overhead timing are the library's (:mod:`muses.adapters`, :mod:`muses.adapters.measure`).

What every number means
-----------------------

Domains: one per recipe. A recipe with one ``data.wikipedia_topics`` topic is a Wikipedia domain (its topic among
the package's topic labels); a recipe that trains on SciFact is the scientific domain.

1. **Adapters.** One LoRA adapter per domain, trained with the project's trainer in adapter mode (base and heads
   frozen) as its recipe says. The shipped Wikipedia recipes train the inverse-cloze task (``ict``: a held-out
   sentence -> its article without it, MNRL) on their topic's train-side articles (the hierarchy task is the other
   choice, which lost on dev, see docs/adapters.md); SciFact's trains its ``train-fit`` claim -> abstract pairs
   (MNRL). No checkpoint selection: the adapter after the last step is used. Two merged adapters (PEFT
   ``add_weighted_adapter``, ``cat``: the sum of the domain updates, weighted ``1/n`` ("mean") or 1 ("sum")) are
   the one-adapter-for-all alternative.
2. **Evaluation data** (test sides only, for reporting; nothing is tuned on them):

   - Wikipedia domain: ``test_articles`` articles of the topic from the test side of the seeded topic-stratified
     split. Retrieval: one held-out sentence of each article (seeded, not the first, at least 6 words) is the query;
     its article without that sentence is the relevant document, among the domain's other test articles; nDCG@10
     as :mod:`muses.evaluation.retrieval` defines it (``document`` scoring and ``sentence`` max-sim).
     k-NN topic accuracy as :mod:`muses.evaluation.knn` defines it (document scale, ``k = 10``, votes weighted by
     cosine): index = ``knn_index_articles`` train-side articles per Wikipedia domain, labelled with their topic;
     queries = the test articles (without the held-out sentence); the domain's number is the accuracy on its own
     test articles. Dev: the same retrieval on ``dev_articles`` train-side articles the adapter did not train on.
   - SciFact: the BEIR ``test`` claims against their cited abstracts plus ``scifact_distractors`` random other
     abstracts (a reduced corpus: numbers are not comparable with the full-corpus nDCG of ``muses eval``).

3. **Conditions.** ``none``: the base model. ``dedicated``: every text under its own domain's adapter.
   ``merged``: every text under one merged adapter. ``cache K``: the corpus side (retrieval corpora and the k-NN
   index) is indexed under its domain's key through the cache (an index knows its domain), and the query side
   (queries, claims, the articles to classify) arrives as **traffic**, phases of one domain each in the order
   ``sequence`` (e.g. A -> B -> C -> A -> D -> E -> A), in requests of ``request_size`` texts, either with an
   explicit key or routed by the centroid router, per text or per request. Each cache reserves its ``K`` slots at
   startup (:meth:`~muses.adapters.AdapterCache.reserve`, timed apart), so that a miss copies weights into a slot.
   Retention = cached quality / dedicated quality.
4. **Costs** from the same run: the cache's hit rate, loads, evictions, miss latency (ms), memory per adapter
   (KB), and switch overhead = time loading, evicting and activating adapters as a % of encode time; plus the
   forward overhead of an active (unmerged) LoRA adapter against the base model on the same requests
   (:func:`muses.adapters.measure.adapter_overhead`), and the router's accuracy per query, per request and per
   article (:func:`muses.adapters.measure.router_accuracy`).
"""

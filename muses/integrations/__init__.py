"""MuSES inside the tools its users already work with: LangChain, LlamaIndex and MTEB.

Each integration is its own module with its own extra, imported on demand:

- :mod:`muses.integrations.langchain` (``muses[langchain]``): ``MusesEmbeddings``, ``MusesZoomRetriever``;
- :mod:`muses.integrations.llama_index` (``muses[llama-index]``): ``MusesEmbedding``, ``MusesRetriever``;
- :mod:`muses.integrations.mteb` (``muses[mteb]``): an MTEB encoder and a fusion / zoom search.

:mod:`muses.integrations.hits` turns store results into ``(text, metadata)`` pairs, the same for every framework.
Nothing in the package imports this one: it sits on top of the store and the encoder.
"""

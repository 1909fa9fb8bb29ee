"""The store-scale and backend-quality benchmarks' arguments: bad ones stop argparse with exit 2 and one message
naming the problem, before any model or data is loaded; good ``--set`` values reach the store configuration."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import backend_quality, store_scale
from muses.store import StoreConfig


def _exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], main: object, *words: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)  # type: ignore[operator]
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert "error:" in message and all(w in message for w in words), err


def test_store_scale_names_the_bad_setting_or_scale(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, words in [
        (["scale", "--set", "funnel_dim=abc"], ("funnel_dim", "integer")),
        (["scale", "--set", "fooo=1"], ("fooo", "Extra inputs")),
        (["scale", "--set", "funnel_dim"], ("KEY=VALUE",)),
        (["scale", "--scales", "document,words"], ("words", "document, sentence, token, fusion")),
    ]:
        _exit_2(capsys, argv, store_scale.main, *words)


def test_store_scale_settings_override_the_benchmarked_config() -> None:
    key, value = store_scale._setting("funnel_dim=128")
    config = StoreConfig(**{**store_scale.SCALE_CONFIG, key: value})
    assert (key, value, config.funnel_dim, config.index) == ("funnel_dim", 128, 128, "hnsw")
    assert store_scale._setting("token_index_dim=null") == ("token_index_dim", None)
    assert store_scale._setting("index=flat") == ("index", "flat")  # not JSON: the string itself
    assert store_scale._scales("sentence, fusion") == ("sentence", "fusion")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_store_scale_setting_parser_returns_a_pair_or_refuses(text: str) -> None:
    """Fuzz: any text is a (key, value) pair or an argparse error, never another exception."""
    import argparse

    try:
        key, _ = store_scale._setting(text)
    except argparse.ArgumentTypeError as e:
        assert "KEY=VALUE" in str(e)
    else:
        assert key and text.startswith(key + "=")


def test_backend_quality_refuses_models_without_labels(capsys: pytest.CaptureFixture[str]) -> None:
    for models in ("torch", "=torch", "a=", "torch=torch,int8"):
        _exit_2(capsys, ["--models", models], backend_quality.main, "LABEL=SPEC")


def test_local_context_dev_refuses_a_bad_context_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import local_context_dev

    for contexts in ("local:0", "paragraph", ",", "document,local:x"):
        _exit_2(capsys, ["--contexts", contexts], local_context_dev.main, "--contexts")
    assert local_context_dev._contexts("document, local ,local:3") == ["document", "local:2", "local:3"]

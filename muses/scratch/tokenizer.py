"""Train a BERT-style WordPiece tokenizer from raw text, for from-scratch encoders.

The pipeline is the standard Hugging Face ``tokenizers`` one for BERT: ``BertNormalizer`` (clean text, lowercase,
strip accents), ``BertPreTokenizer`` (split on whitespace and punctuation), a ``WordPiece`` model trained on the
texts, ``[CLS] $A [SEP]`` templates and the ``WordPiece`` decoder. It is returned wrapped as a transformers fast
tokenizer, so that offset mappings, padding, ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` and
sentence-transformers all work with it unchanged.

    >>> tok = train_tokenizer(["Cats purr.", "Dogs bark."] * 10, vocab_size=200, min_frequency=1)
    >>> tok("Cats purr.")["input_ids"][0] == tok.cls_token_id
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import WordPiece
from transformers import PreTrainedTokenizerFast

from muses.errors import InputError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # in id order: [PAD] is 0, the ScratchConfig default pad_token_id


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    max_length: int = 256,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a lowercasing WordPiece tokenizer on ``texts`` and wrap it as a transformers fast tokenizer.

    Args:
        texts: the training corpus, any iterable of strings (streamed once; a generator is fine).
        vocab_size: the largest vocabulary to learn, special tokens and single characters included. A small
            corpus may give fewer entries.
        max_length: ``model_max_length`` of the returned tokenizer; keep it at most the model's ``max_position``.
        min_frequency: a merge must occur at least this often to enter the vocabulary.

    Returns:
        A fast tokenizer with ids ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``; it adds ``[CLS] ... [SEP]``
        (and ``[CLS] A [SEP] B [SEP]`` for pairs, with token type ids 0/1) and gives offset mappings.

    Raises:
        InputError: for no texts, a non-string item, or a bad size.
    """
    if isinstance(texts, str):
        raise InputError("texts must be an iterable of strings, got one string; wrap it in a list: [text].")
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise InputError(f"vocab_size must be > {len(SPECIAL_TOKENS)} (the special tokens), got {vocab_size}.")
    if max_length < 3:
        raise InputError(f"max_length must be >= 3 ([CLS], one token, [SEP]), got {max_length}.")
    if min_frequency < 1:
        raise InputError(f"min_frequency must be >= 1, got {min_frequency}.")
    stream = iter(texts)
    try:
        first = next(stream)
    except StopIteration:
        raise InputError("train_tokenizer got no texts; pass a non-empty list (or iterator) of strings.") from None

    def checked() -> Iterator[str]:
        for i, text in enumerate(itertools.chain([first], stream)):
            if not isinstance(text, str):
                raise InputError(f"text {i} is a {type(text).__name__}, not a string; pass only strings.")
            yield text

    tok = Tokenizer(WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tok.train_from_iterator(checked(), trainer=trainer)
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_length,
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )

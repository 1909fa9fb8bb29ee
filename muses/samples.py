"""A small built-in sample corpus for demos, `make run` and smoke tests (written for MuSES; public domain)."""

from __future__ import annotations

SAMPLE_DOCUMENTS: list[dict[str, str]] = [
    {
        "id": "photosynthesis",
        "text": (
            "Photosynthesis is the process by which green plants turn light into chemical energy. "
            "It takes place mostly in the chloroplasts of leaf cells. Water and carbon dioxide go in; "
            "glucose and oxygen come out.\n\n"
            "Almost all the oxygen in the atmosphere was produced this way. Without it, animal life as we know "
            "it could not exist."
        ),
    },
    {
        "id": "transformer",
        "text": (
            "The transformer is a neural network architecture based on attention. It reads a whole sequence at "
            "once instead of word by word. Sentence embedding models such as MiniLM are small transformers "
            "trained to put similar sentences close together."
        ),
    },
    {
        "id": "volcano",
        "text": (
            "A volcano is an opening in the crust of a planet through which molten rock escapes. "
            "Mount Etna in Sicily is one of the most active volcanoes in Europe. Its eruptions have shaped the "
            "island's farms and towns for thousands of years."
        ),
    },
    {
        "id": "bread",
        "text": (
            "Bread is made from flour, water, salt and yeast. The yeast eats sugars and releases carbon dioxide, "
            "which makes the dough rise. Baking then sets the structure and browns the crust."
        ),
    },
]

SAMPLE_QUERIES: list[str] = [
    "How do plants make oxygen?",
    "What makes dough rise?",
    "Which European volcano erupts often?",
]

"""The service tests' documents and write key (imported by their fixtures and tests)."""

from __future__ import annotations

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

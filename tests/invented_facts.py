"""Facts that exist only in these documents (invented names, places and numbers), for the
plugins' end-to-end tests with the real default models. A question about the capital of
France is answered with no document at all, so such a test passes when documents are ignored;
these cannot be, and each test also checks that the decoder does not know them without the
documents (so the test would fail on that fault).
"""
from __future__ import annotations

MUSEUM = "The museum in Tallberg was founded by Ida Varga in 1911. It keeps maps of the old river harbour."
CHOIR = "The choir of Vellmar sings at the market square every spring. It has 48 members and a blue banner."
DISTRACTORS = [
    "The lighthouse at Korsnes Point was rebuilt in 1932 by the engineer Aldo Brenner after a winter storm.",
    "The bakery on Quay Street bakes rye bread from a recipe of 1870 and opens at six in the morning.",
    "The ferry between Orlin and Saaby crosses the bay twice a day and carries bicycles for free.",
]
DOCUMENTS = [MUSEUM, CHOIR, *DISTRACTORS]

# (question, what the answer must contain, the document that holds it)
MUSEUM_QA = ("Who founded the museum in Tallberg?", "Varga", MUSEUM)
CHOIR_QA = ("How many members does the choir of Vellmar have?", "48", CHOIR)

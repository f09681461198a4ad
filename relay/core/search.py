"""NIP-50 search queries: words of the query, all of which a matching content must hold.

The same word rules as the SQLite store's FTS5 `unicode61` tokenizer: a word is a run
of letters and digits, compared case-insensitively; everything else separates words.
NIP-50 `key:value` extensions (`include:spam`, `language:en`, ...) are not supported and,
as NIP-50 says, ignored.
"""

from __future__ import annotations

import re

from relay.core.errors import Invalid

WORD = re.compile(r"[^\W_]+")
EXTENSION = re.compile(r"^[^\s:]+:\S*$")
MAX_QUERY_LENGTH = 256
MAX_QUERY_WORDS = 16


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def parse_query(value: object) -> tuple[str, ...]:
    """The distinct words of a `search` value, extensions left out; raises Invalid."""
    if type(value) is not str:
        raise Invalid("search must be a string")
    if len(value) > MAX_QUERY_LENGTH:
        raise Invalid(f"search is longer than {MAX_QUERY_LENGTH} characters")
    terms = [t for t in value.split() if not EXTENSION.match(t)]
    found = tuple(dict.fromkeys(w for t in terms for w in words(t)))
    if len(found) > MAX_QUERY_WORDS:
        raise Invalid(f"search may hold at most {MAX_QUERY_WORDS} words")
    return found


def content_matches(query: tuple[str, ...], content: str) -> bool:
    """Every word of the query is a word of the content (an empty query matches all)."""
    if not query:
        return True
    return set(query) <= set(words(content))


def fts_match(query: tuple[str, ...]) -> str:
    """An FTS5 MATCH expression: each word a quoted string, so none is FTS5 syntax."""
    return " ".join('"' + w.replace('"', '""') + '"' for w in query)

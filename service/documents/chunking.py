"""A recursive text splitter that measures in the embedding model's own tokens.

The text is cut into pieces that each fit the chunk size, at the coarsest separator that works
(paragraphs, then lines, then sentences, clauses and words; a single over-long word is cut by
characters), and consecutive pieces are packed into chunks of at most `size` tokens. Consecutive
chunks share up to `overlap` tokens of whole pieces, so a passage cut at a chunk's end is whole
at the next one's start. Chunks are character ranges of the original text: every character
belongs to some chunk (chunks of only whitespace are left out).

Token counts include the model's special tokens ([CLS] and [SEP] for BERT models), exactly as the
model will see the chunk, so no chunk is ever refused or cut by the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.inference.base import TokenCounter

SEPARATORS = ("\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ")


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    start: int  # character offsets into the document's text, end exclusive
    end: int
    tokens: int


def _cut(text: str, start: int, end: int, separator: str) -> list[int]:
    """Ends of the pieces of text[start:end] cut after each separator (the last piece ends at end)."""
    ends = []
    at = text.find(separator, start, end)
    while at != -1:
        piece_end = at + len(separator)
        if piece_end < end:
            ends.append(piece_end)
        at = text.find(separator, piece_end, end)
    ends.append(end)
    return ends


class _Splitter:
    def __init__(self, text: str, count: TokenCounter, size: int) -> None:
        self.text = text
        self.count = count
        self.size = size

    def pieces(self, start: int, end: int, level: int, tokens: int) -> list[tuple[int, int, int]]:
        """(start, end, tokens) pieces of text[start:end] (which takes `tokens`), each within size."""
        if tokens <= self.size:
            return [(start, end, tokens)]
        while level < len(SEPARATORS):
            ends = _cut(self.text, start, end, SEPARATORS[level])
            level += 1
            if len(ends) > 1:
                bounds = list(zip([start, *ends[:-1]], ends, strict=True))
                counts = self.count([self.text[a:b] for a, b in bounds])
                out: list[tuple[int, int, int]] = []
                for (a, b), n in zip(bounds, counts, strict=True):
                    out.extend(self.pieces(a, b, level, n))
                return out
        return self.by_characters(start, end)

    def by_characters(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """A run without separators (a very long word, or a script without spaces): the longest
        prefixes that fit, found by bisection on the character count."""
        out = []
        while start < end:
            low, high = start + 1, end  # text[start:low] always fits: one character is a few tokens
            while low < high:
                middle = (low + high + 1) // 2
                if self.count([self.text[start:middle]])[0] <= self.size:
                    low = middle
                else:
                    high = middle - 1
            out.append((start, low, self.count([self.text[start:low]])[0]))
            start = low
        return out


def split_text(text: str, count: TokenCounter, *, size: int, overlap: int) -> list[Chunk]:
    """Chunks of at most `size` tokens (special tokens included) covering the whole text."""
    special = count([""])[0]  # tokens the model adds to every text
    if size <= special + 1:
        raise ValueError(f"chunk size {size} leaves no room beside {special} special tokens")
    splitter = _Splitter(text, count, size)
    pieces = splitter.pieces(0, len(text), 0, count([text])[0])
    chunks: list[Chunk] = []
    first = 0
    while first < len(pieces):
        # Pack pieces while the estimate (their tokens without the specials of each) fits, then
        # check the real count of the packed text and give back pieces until it fits.
        last, estimate = first, pieces[first][2]
        while last + 1 < len(pieces) and estimate + pieces[last + 1][2] - special <= size:
            last += 1
            estimate += pieces[last][2] - special
        while True:
            start, end = pieces[first][0], pieces[last][1]
            tokens = count([text[start:end]])[0] if last > first else pieces[first][2]
            if tokens <= size or last == first:
                break
            last -= 1
        chunks.append(Chunk(index=len(chunks), start=start, end=end, tokens=tokens))
        if last + 1 >= len(pieces):
            break
        # The next chunk repeats the trailing pieces of this one that fit in `overlap` tokens.
        following, shared = last + 1, 0
        while following - 1 > first and shared + pieces[following - 1][2] - special <= overlap:
            following -= 1
            shared += pieces[following][2] - special
        if following == last + 1 and overlap > 0:
            # The last piece alone is larger than the overlap (a whole paragraph, say): cut it
            # finer, and repeat its trailing sentences or words instead.
            a, b, n = pieces[last]
            fine = _Splitter(text, count, max(overlap, special + 1)).pieces(a, b, 0, n)
            pieces[last : last + 1] = fine
            k = len(fine)
            while k > 1 and shared + fine[k - 1][2] - special <= overlap:
                k -= 1
                shared += fine[k][2] - special
            following = last + k
        first = following
    # A chunk of nothing but whitespace (a run of blank lines) means nothing to a model.
    kept = [c for c in chunks if text[c.start : c.end].strip()]
    return [Chunk(index=i, start=c.start, end=c.end, tokens=c.tokens) for i, c in enumerate(kept)]

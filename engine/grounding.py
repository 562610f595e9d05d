"""Does an answer's every number and name appear in the passages it cites? The facts that do not are returned with
the cited sentence nearest to them, so that the app can show the two side by side ("1863" against a cited "1865").

Qt-free and model-free: plain text in, plain data out. Facts are numbers (years, amounts: "1,200" and "1200" are the
same), codes (letters with digits: "A-113", "ISO 9001"'s "9001") and capitalised names ("Anders Brekke"). They are
compared after normalising case, thousands separators and whitespace. A name counts as present when each of its words
is (so "keeper Anders Brekke" is found in "Anders Brekke, the head keeper"). A small whole number may also be written
as a word ("3" and "three"). Page references ("page 3") and list numbers are not facts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

NUMBER, CODE, NAME = "number", "code", "name"
_MARKUP = re.compile(r"[*`#>|]|__|\[|\]\([^)]*\)")
_SEPARATOR = "[,\u202f\u00a0\u2009']"
_GROUPED = re.compile(rf"(?<=\d){_SEPARATOR}(?=\d{{3}}(?!\d))")
_NUMBER = re.compile(rf"(?<![\w.])(?:\d{{1,3}}(?:{_SEPARATOR}\d{{3}})+(?:\.\d+)?|\d+(?:[.:/]\d+)*)(?!\d)")
_ORDINAL = re.compile(r"^(\d+)(?:st|nd|rd|th|s)$", re.IGNORECASE)
_CODE = re.compile(r"(?<![\w-])(?=[\w-]*\d)(?=[\w-]*[^\W\d_])[^\W_]+(?:-[^\W_]+)*(?![\w-])")
_WORD = re.compile(r"[^\W\d_][\w'’-]*")
_LIST_MARKER = re.compile(r"(?m)^\s*(\d+)[.)]\s")
_PAGE_REFERENCE = re.compile(r"(?:\bpages?|\bp\.|\bpp\.|\bsection|§)\s*$", re.IGNORECASE)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")  # in an answer: a line (a list item) ends a sentence too
_PASSAGE_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n\s*\n")  # a passage's single line ends are the page's
MAX_HEADING = 40  # characters
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*(?:[-+•]\s+)?)$")
_CONNECTORS = {"of", "de", "da", "del", "der", "van", "von", "la", "le", "du", "den", "al", "bin", "y"}
_COMMON = frozenset(re.findall(r"\w+", """
a about according after again all also although an and another answer any are as at based because before both but by
can could did do does during each either even every finally first for from further furthermore given has have he her
here his how however i if in indeed instead it its last let many may moreover most much my neither next no nor not note
now of on once one only or other our overall second she since so some source sources still such summary than that the
their them then there therefore these they third this those though thus to too two under unlike until we were what when
where whether which while who whom whose why with without yes yet you your
"""))
_SMALL_NUMBERS = re.findall(r"\w+", "zero one two three four five six seven eight nine ten eleven twelve thirteen "
                            "fourteen fifteen sixteen seventeen eighteen nineteen twenty")


@dataclass(frozen=True)
class Fact:
    """A number, code or name as the answer writes it (`text`), its normalised `key`, and the answer's sentence."""

    text: str
    kind: str  # NUMBER, CODE or NAME
    key: str
    sentence: str


@dataclass(frozen=True)
class UnsupportedFact:
    """A fact of the answer that no cited passage contains, and the cited sentence nearest to it: passages[passage]
    [start:end] (passage is -1 when nothing was cited)."""

    text: str
    kind: str
    passage: int
    start: int
    end: int


def normalise(text: str) -> str:
    """Lower case, single spaces, no thousands separators ("1,200" -> "1200")."""
    return " ".join(_GROUPED.sub("", text).casefold().split())


def answer_facts(answer: str) -> list[Fact]:
    """The numbers, codes and capitalised names of `answer` (Markdown), each once, in order."""
    text = _MARKUP.sub(" ", answer)
    found: list[tuple[int, str, str, str]] = []  # (where, text, kind, key)
    taken: list[tuple[int, int]] = []
    for match in _CODE.finditer(text):
        if not _ORDINAL.match(match.group()):  # "1860s", "20th": a number, below
            taken.append(match.span())
            found.append((match.start(), match.group(), CODE, "-".join(_code_parts(match.group()))))
    list_markers = {m.start(1) for m in _LIST_MARKER.finditer(text)}
    for match in _NUMBER.finditer(text):
        start = match.start()
        if not (any(s <= start < e for s, e in taken) or start in list_markers
                or _PAGE_REFERENCE.search(text, 0, start)):
            found.append((start, match.group(), NUMBER, normalise(match.group())))
    found += [(start, name, NAME, normalise(name)) for name, start in _names(text)]
    facts: dict[tuple[str, str], Fact] = {}
    for start, written, kind, key in sorted(found):
        facts.setdefault((kind, key), Fact(written, kind, key, _sentence_at(text, start)))
    return list(facts.values())


def unsupported_facts(answer: str, passages: Sequence[str]) -> list[UnsupportedFact]:
    """The facts of `answer` that none of `passages` contains, each with the passage sentence nearest to it.
    [] when nothing is cited (there is nothing to check against)."""
    if not passages:
        return []
    cited = [normalise(p) for p in passages]
    whole = "\n".join(cited)
    sentences = [(i, s, e) for i, p in enumerate(passages) for s, e in _sentences(p, _PASSAGE_SENTENCE_BREAK)]
    result = []
    for fact in answer_facts(answer):
        if _present(fact, whole):
            continue
        passage, start, end = max(sentences, key=lambda t: _likeness(fact, passages[t[0]][t[1]:t[2]]),
                                  default=(-1, 0, 0))
        result.append(UnsupportedFact(fact.text, fact.kind, passage, start, end))
    return result


def _present(fact: Fact, cited: str) -> bool:
    """Whether normalised `cited` text contains the fact."""
    if fact.kind == NUMBER:
        if re.search(rf"(?<![\w.]){re.escape(fact.key)}(?!\d|[.:/]\d)", cited):
            return True
        return fact.key.isdigit() and int(fact.key) < len(_SMALL_NUMBERS) and bool(
            re.search(rf"\b{_SMALL_NUMBERS[int(fact.key)]}\b", cited))
    if fact.kind == CODE:
        parts = fact.key.split("-")
        return bool(re.search(r"(?<![\w])" + r"[-\s]?".join(map(re.escape, parts)) + r"(?![\w])", cited))
    return all(re.search(rf"(?<!\w){re.escape(word)}(?!\w)", cited) for word in _name_words(fact.key))


def _name_words(name: str) -> list[str]:
    words = [re.sub(r"['’]s$", "", w) for w in name.split()]
    return [w for w in words if len(w) > 1 and w not in _CONNECTORS]


def _code_parts(code: str) -> list[str]:
    """"A-113" -> ["a", "113"]: letter and digit runs, lower case."""
    return re.findall(r"[^\W\d_]+|\d+", code.casefold())


def _names(text: str) -> list[tuple[str, int]]:
    """Runs of capitalised words (with connectors such as "van" inside), less the capitalised common words that
    start a sentence ("According", "The"); (name, where it starts)."""
    lowercase_words = {w for w in _WORD.findall(text) if w.islower()}
    words = [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]
    names: list[tuple[str, int]] = []
    run: list[tuple[str, int, int]] = []

    def close() -> None:
        while run and run[-1][0].casefold() in _CONNECTORS:
            run.pop()
        while run and _is_common(run[0], text, lowercase_words):
            run.pop(0)
        if run:
            names.append((" ".join(w for w, _, _ in run), run[0][1]))
        run.clear()

    for word, start, end in words:
        joined = not run or text[run[-1][2]:start] == " "
        capital = word[0].isupper() and len(word) > 1 and not any(c.isdigit() for c in word)
        if run and joined and (capital or word in _CONNECTORS):
            run.append((word, start, end))
            continue
        close()
        if capital:
            run.append((word, start, end))
    close()
    return names


def _is_common(word: tuple[str, int, int], text: str, lowercase_words: set[str]) -> bool:
    """A capitalised word that is an ordinary word: a connector, or a common word / a word also written in lower
    case, at the start of a sentence."""
    lower = word[0].casefold()
    if lower in _CONNECTORS or len(word[0]) == 1:
        return True
    at_start = bool(_SENTENCE_START.search(text, 0, word[1]))
    return at_start and (lower in _COMMON or lower in lowercase_words)


def _sentence_at(text: str, position: int) -> str:
    for start, end in _sentences(text):
        if start <= position < end:
            return text[start:end]
    return ""


def _sentences(text: str, breaks: re.Pattern = _SENTENCE_BREAK) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in [*breaks.finditer(text), None]:
        end = match.start() if match else len(text)
        if text[start:end].strip():
            spans += _heading_apart(text, start, end)
        start = match.end() if match else end
    return spans


def _heading_apart(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """A sentence that starts with a line of its own, short and without punctuation (a PDF's heading, which its text
    layer gives without a blank line), as two: the heading and the sentence."""
    newline = text.find("\n", start, end)
    whole_line = start == 0 or text[start - 1] == "\n"
    if whole_line and 0 < newline - start <= MAX_HEADING and not re.search(r"[.!?,;:]", text[start:newline]):
        return [(start, newline), (newline + 1, end)]
    return [(start, end)]


def _likeness(fact: Fact, sentence: str) -> float:
    """How much `sentence` looks like the place the fact came from: shared words with the answer's sentence, and a
    fact of the same kind (a number of the same length, a name with the same initial)."""
    words = {w.casefold() for w in _WORD.findall(fact.sentence) if len(w) > 2} - {fact.key}
    own = {w.casefold() for w in _WORD.findall(sentence) if len(w) > 2}
    score = float(len(words & own))
    if fact.kind == NUMBER:
        numbers = [normalise(n) for n in _NUMBER.findall(sentence)]
        score += 1.5 * any(numbers) + max((_digit_likeness(fact.key, n) for n in numbers), default=0.0)
    elif fact.kind == CODE:
        score += 1.5 * bool(_CODE.search(sentence))
    else:
        initials = {w[0] for w in _WORD.findall(sentence) if w[0].isupper()}
        score += 1.5 * (fact.text[0] in initials)
    return score


def _digit_likeness(a: str, b: str) -> float:
    """1 for numbers of the same length, plus the share of leading digits they have in common."""
    if len(a) != len(b):
        return 0.0
    common = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
    return 1.0 + common / len(a)

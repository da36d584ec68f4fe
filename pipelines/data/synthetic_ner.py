"""A generated NER corpus (PER, LOC, ORG, MISC; IOB2) where context decides the tag.

Sentences come from templates whose context words fix the type of each slot ("{PER} visited
{LOC} last week ."), filled with names from pools that overlap on purpose:

- one word, several types: `jordan` is a first name, a last name and a country; `washington`
  a last name and a city, and starts the organisation `washington post`; `ford`, `apple`,
  `orange`, `amazon` and `chelsea` are organisations, but `apple`, `orange` and `turkey` are
  also plain food (tag O) and `chelsea`, `paris` are first names;
- one word, B or I: `smith` is B-PER after a title (`mr smith`) and I-PER after a first name;
  `new` and `united` open a LOC (`new york`, `united states`) or an ORG (`new york times`,
  `united nations`), and only the words to their right say which; `madrid` is B-LOC alone
  and I-ORG in `real madrid`; `jordan` is I-ORG in `bank of jordan`.

Each template slot has one type, so the tags are a pure function of the tokens (the tests
check this), yet a per-token lookup cannot reach 100%: a model must read both sides.
Lower-case, whitespace-tokenized, like the other generated corpora.

Example:
    tokens: president washington arrived in new york on friday .
    tags:   O         B-PER      O       O  B-LOC I-LOC O O     O
"""
from __future__ import annotations

import random

_FIRST = "john mary james anna peter laura david sarah michael emma thomas maria daniel".split()
_FIRST_AMBIGUOUS = "jordan paris georgia chelsea victoria florence austin sydney".split()
_LAST = "smith brown miller wilson taylor davis clark lewis walker cooper evans hughes".split()
_LAST_AMBIGUOUS = "washington jackson ford lincoln morgan jordan houston".split()
_TITLES = ["mr", "mrs", "dr"]
_CITIES = "london berlin tokyo rome madrid cairo nairobi moscow boston chicago".split()
_CITIES_AMBIGUOUS = ("paris washington jackson lincoln houston sydney florence austin "
                     "victoria").split()
_COUNTRIES = "france germany spain egypt kenya brazil china japan italy".split()
_COUNTRIES_AMBIGUOUS = "jordan georgia turkey".split()
_PLACES_MULTI = ["new york", "los angeles", "hong kong", "south africa", "new zealand",
                 "sri lanka", "united states", "saudi arabia", "buenos aires", "rio de janeiro"]
_ORGS = ["reuters", "google", "siemens", "nasa", "unicef", "united nations", "general motors",
         "red cross", "world bank", "boeing", "nestle"]
_ORGS_AMBIGUOUS = ["ford", "apple", "orange", "amazon", "washington post", "new york times",
                   "morgan stanley"]
_CLUBS = ["arsenal", "juventus", "ajax", "bayern munich", "boston celtics"]
_CLUBS_AMBIGUOUS = ["chelsea", "real madrid"]
_NATIONALITIES = ("french german chinese american british jordanian brazilian kenyan egyptian "
                  "spanish turkish japanese italian").split()
_EVENTS = ["world cup", "olympic games", "french open", "tour de france", "nobel prize",
           "champions league", "paris marathon"]
_LANGUAGES = "english french german spanish arabic chinese japanese turkish".split()
_FOOD = ["an apple", "an orange", "apples", "oranges", "turkey", "some turkey", "fresh bread",
         "rice", "an orange cake"]
_DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()

_TEMPLATES = [
    "{PER} visited {LOC} last week .",
    "{PER} flew from {LOC} to {LOC} on {DAY} .",
    "{PER} works for {ORG} in {LOC} .",
    "shares of {ORG} rose {NUM} percent on {DAY} .",
    "{ORG} shares fell sharply after the report .",
    "president {LAST} arrived in {LOC} on {DAY} .",
    "{COUNTRY} beat {COUNTRY} {NUM} - {NUM} in the {EVENT} .",
    "the {NAT} minister met {PER} in {CITY} .",
    "{PER} said the {NAT} government would talk to {ORG} .",
    "talks between {COUNTRY} and {COUNTRY} ended without a deal .",
    "{PER} bought {FOOD} at the market in {CITY} .",
    "{ORG} opened a new office in {LOC} .",
    "{PER} , who plays for {CLUB} , scored twice on {DAY} .",
    "the {EVENT} will be held in {LOC} next year .",
    "mr {LAST} told {ORG} that {COUNTRY} would sign the deal .",
    "{PER} speaks {LANG} and {LANG} .",
    "a spokesman for {ORG} in {CITY} declined to comment .",
    "{PER} , the {NAT} coach , praised {CLUB} .",
    "police in {LOC} arrested {PER} on {DAY} .",
    "{ORG} bought a stake in {ORG} for {NUM} million dollars .",
    "{PER} was born in {CITY} .",
    "{LOC} is home to {NUM} million people .",
    "{PER} won the {EVENT} in {CITY} .",
    "the {NAT} team arrived in {CITY} for the {EVENT} .",
    "{PER} ate {FOOD} for lunch .",
    "{CLUB} signed {PER} from {CLUB} .",
    "the central bank of {COUNTRY} raised rates on {DAY} .",
]

_AMBIGUOUS_SHARE = 0.3  # how often a slot draws from its pool's ambiguous names


def _pick(rng: random.Random, common: list[str], ambiguous: list[str]) -> str:
    return rng.choice(ambiguous if ambiguous and rng.random() < _AMBIGUOUS_SHARE else common)


def _person(rng: random.Random) -> tuple[list[str], list[str]]:
    first = _pick(rng, _FIRST, _FIRST_AMBIGUOUS)
    last = _pick(rng, _LAST, _LAST_AMBIGUOUS)
    kind = rng.random()
    if kind < 0.6:
        return [first, last], ["B-PER", "I-PER"]
    if kind < 0.8:
        return [first], ["B-PER"]
    return [rng.choice(_TITLES), last], ["O", "B-PER"]


def _entity(words: str, entity_type: str) -> tuple[list[str], list[str]]:
    tokens = words.split()
    return tokens, [f"B-{entity_type}"] + [f"I-{entity_type}"] * (len(tokens) - 1)


def _organisation(rng: random.Random) -> tuple[list[str], list[str]]:
    if rng.random() < 0.2:
        return _entity(f"bank of {_pick(rng, _COUNTRIES, _COUNTRIES_AMBIGUOUS)}", "ORG")
    return _entity(_pick(rng, _ORGS, _ORGS_AMBIGUOUS), "ORG")


def _location(rng: random.Random) -> tuple[list[str], list[str]]:
    kind = rng.random()
    if kind < 0.4:
        return _entity(_pick(rng, _CITIES, _CITIES_AMBIGUOUS), "LOC")
    if kind < 0.75:
        return _entity(_pick(rng, _COUNTRIES, _COUNTRIES_AMBIGUOUS), "LOC")
    return _entity(rng.choice(_PLACES_MULTI), "LOC")


_SLOTS = {
    "PER": _person,
    "LAST": lambda rng: _entity(_pick(rng, _LAST, _LAST_AMBIGUOUS), "PER"),
    "LOC": _location,
    "CITY": lambda rng: _entity(_pick(rng, _CITIES, _CITIES_AMBIGUOUS), "LOC"),
    "COUNTRY": lambda rng: _entity(_pick(rng, _COUNTRIES, _COUNTRIES_AMBIGUOUS), "LOC"),
    "ORG": _organisation,
    "CLUB": lambda rng: _entity(_pick(rng, _CLUBS, _CLUBS_AMBIGUOUS), "ORG"),
    "NAT": lambda rng: _entity(rng.choice(_NATIONALITIES), "MISC"),
    "EVENT": lambda rng: _entity(rng.choice(_EVENTS), "MISC"),
    "LANG": lambda rng: _entity(rng.choice(_LANGUAGES), "MISC"),
    "FOOD": lambda rng: (rng.choice(_FOOD).split(), None),
    "DAY": lambda rng: ([rng.choice(_DAYS)], None),
    "NUM": lambda rng: ([str(rng.randint(2, 99))], None),
}


def ner_example(rng: random.Random) -> tuple[list[str], list[str]]:
    """One (tokens, IOB2 tags) pair from a random template."""
    tokens, tags = [], []
    for word in rng.choice(_TEMPLATES).split():
        if word.startswith("{"):
            words, slot_tags = _SLOTS[word[1:-1]](rng)
            tokens += words
            tags += slot_tags if slot_tags is not None else ["O"] * len(words)
        else:
            tokens.append(word)
            tags.append("O")
    return tokens, tags

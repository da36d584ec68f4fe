"""A generated translation corpus whose rules need attention, not a word-for-word lookup.

The source language is English-like: `[DET|NUMBER] ADJ* NOUN VERB [DET|NUMBER] ADJ* NOUN
(PREP [DET|NUMBER] ADJ* NOUN)*`, singular and plural nouns (a few irregular: man/men), present
and past verbs (3rd-person -s, irregular pasts: saw, took). The target language is a made-up
one, fixed for all seeds, related to the source by deterministic rules:

- vocabulary: every source lemma has its own target stem (`dog` -> `vum`); this/these and
  that/those share a stem, the inflection tells the number;
- order: subject, prepositional phrases, object, verb (SOV); in a noun phrase the determiner
  comes first, then the noun, then the adjectives; prepositions become postpositions;
- agreement: each target noun has a gender (m, f or n). Determiners and adjectives take the
  suffix of their noun's gender and number (m: -o/-os, f: -a/-as, n: -e/-es), plural nouns
  take -en, and the verb takes the suffix of its *subject* (so a past-tense verb, which English
  does not inflect, still needs the subject's gender and number);
- tense: the past adds the particle `ta` after the verb; the present has none.

`translate(source)` parses the source sentence and builds the target: the mapping is a pure
function of the source (no noise), so a perfect model reaches BLEU 100.

Example (checked by the tests):
    source: the old teacher found two red boxes near my house
    target: zape ratatam balepe buke sudumet vak sarip vapiten fedepos nikezake ta
            the  teacher old    my   house  near two  boxes  red     find-    PAST
                                                                     (teacher)
`teacher` (ratatam) is neuter and singular: the -e on zape, balepe and on the verb; `box`
(vapit) is masculine, plural: vapit-en, fedep-os; `near my house` became `buke sudumet vak`.
"""
from __future__ import annotations

import random

# ----------------------------------------------------------------------------- source lexicon
# Nouns: singular -> plural (regular ones are derived below).
_NOUN_LIST = """dog cat horse bird cow wolf:wolves fox:foxes mouse:mice man:men woman:women
child:children boy girl baby:babies teacher doctor farmer soldier king queen baker student
friend neighbor sister brother house car tree river city:cities village garden table chair
book letter apple bottle box:boxes window door bridge road boat ship ball flower stone hill
forest lake key cup hat coat shoe bag lamp song picture cake knife:knives bus:buses egg""".split()
_ADJECTIVES = """big small old young red blue green black white yellow happy sad tall short long
new quiet loud angry clever lazy brave hungry tired rich poor strong weak beautiful ugly heavy
dark bright warm cold dirty strange famous empty gentle""".split()
# Verbs: base:third-person:past, where irregular; regular ones are derived below.
_VERB_LIST = """see:sees:saw find:finds:found take:takes:took carry:carries:carried
watch:watches:watched follow like love hate help visit paint push pull wash:washes:washed
build:builds:built break:breaks:broke buy:buys:bought sell:sells:sold chase
catch:catches:caught hold:holds:held hear:hears:heard know:knows:knew meet:meets:met want
need open call throw:throws:threw bring:brings:brought keep:keeps:kept draw:draws:drew
remember forget:forgets:forgot touch:touches:touched kick fix:fixes:fixed drop:drops:dropped
move lift steal:steals:stole hide:hides:hid feed:feeds:fed teach:teaches:taught
ask answer greet protect describe admire ignore notice""".split()
_PREPOSITIONS = "in on near under behind with without from beside above".split()
# Determiners: lemma -> {number: surface form}. The bare plural (no determiner) is also allowed.
_DETERMINERS = {
    "the": {"sg": "the", "pl": "the"}, "a": {"sg": "a"}, "this": {"sg": "this", "pl": "these"},
    "that": {"sg": "that", "pl": "those"}, "my": {"sg": "my", "pl": "my"},
    "your": {"sg": "your", "pl": "your"}, "our": {"sg": "our", "pl": "our"},
    "their": {"sg": "their", "pl": "their"}, "every": {"sg": "every"}, "some": {"pl": "some"},
    "no": {"sg": "no", "pl": "no"},
}
_NUMBERS = "two three four five six seven eight nine ten".split()


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def _verb_forms(entry: str) -> tuple[str, str, str]:
    if ":" in entry:
        base, third, past = entry.split(":")
        return base, third, past
    third = entry + ("es" if entry.endswith(("s", "x", "ch", "sh")) else "s")
    return entry, third, entry + ("d" if entry.endswith("e") else "ed")


NOUNS = {entry.split(":")[0]: (entry.split(":")[1] if ":" in entry else _plural(entry))
         for entry in _NOUN_LIST}
VERBS = {forms[0]: forms for forms in map(_verb_forms, _VERB_LIST)}

# ----------------------------------------------------------------------------- target lexicon
AGREEMENT = {("m", "sg"): "o", ("m", "pl"): "os", ("f", "sg"): "a", ("f", "pl"): "as",
             ("n", "sg"): "e", ("n", "pl"): "es"}
PLURAL_NOUN_SUFFIX = "en"
PAST_PARTICLE = "ta"


def _target_lexicon() -> tuple[dict, dict]:
    """Target stems for every source lemma and a gender for every noun; fixed for all seeds.

    Stems end in k, m, p, r or t, so the suffixes (-o, -os, -en, ...) stay visible and no
    inflected form of one stem equals a form of another (checked while building).
    """
    rng = random.Random("synthetic-translation-lexicon-v1")
    onsets, vowels, codas = "bdfgklmnprstvz", "aeiu", "kmprt"
    source_words = set(NOUNS) | set(NOUNS.values()) | set(_ADJECTIVES) | set(_PREPOSITIONS)
    source_words |= {form for forms in VERBS.values() for form in forms}
    source_words |= set(_DETERMINERS) | set(_NUMBERS)
    lemmas = ([("noun", n) for n in NOUNS] + [("adj", a) for a in _ADJECTIVES]
              + [("verb", v) for v in VERBS] + [("prep", p) for p in _PREPOSITIONS]
              + [("det", d) for d in _DETERMINERS] + [("num", n) for n in _NUMBERS])
    used, stems = {PAST_PARTICLE}, {}
    for lemma in lemmas:
        while True:
            syllables = rng.choice((1, 2, 2, 3)) if lemma[0] not in ("det", "prep") else 1
            stem = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))
            stem += rng.choice(codas)
            if stem in used or stem in source_words:
                continue
            forms = {stem} | {stem + suffix for suffix in AGREEMENT.values()}
            forms.add(stem + PLURAL_NOUN_SUFFIX)
            if forms & used or forms & source_words:
                continue
            used |= forms
            stems[lemma] = stem
            break
    genders = ["m", "f", "n"] * (len(NOUNS) // 3 + 1)
    rng.shuffle(genders)
    return stems, dict(zip(NOUNS, genders))


TARGET_STEMS, GENDERS = _target_lexicon()

# Every source surface form -> (class, lemma, number or tense), for the parser.
_SURFACE: dict[str, tuple[str, str, str]] = {}
for _noun, _noun_plural in NOUNS.items():
    _SURFACE[_noun] = ("noun", _noun, "sg")
    _SURFACE[_noun_plural] = ("noun", _noun, "pl")
for _adjective in _ADJECTIVES:
    _SURFACE[_adjective] = ("adj", _adjective, "")
for _base, (_, _third, _past) in VERBS.items():
    _SURFACE[_base] = ("verb", _base, "present")
    _SURFACE[_third] = ("verb", _base, "present")
    _SURFACE[_past] = ("verb", _base, "past")
for _preposition in _PREPOSITIONS:
    _SURFACE[_preposition] = ("prep", _preposition, "")
for _determiner, _forms in _DETERMINERS.items():
    for _number, _form in _forms.items():
        _SURFACE[_form] = ("det", _determiner, _number)
for _numeral in _NUMBERS:
    _SURFACE[_numeral] = ("num", _numeral, "pl")

SOURCE_VOCABULARY = sorted(_SURFACE)
_NOUN_LEMMAS, _VERB_LEMMAS = list(NOUNS), list(VERBS)


def _target_noun_phrase(phrase: list[tuple[str, str, str]]) -> tuple[list[str], str, str]:
    """[det] adj* noun (source order) -> (target words, gender, number)."""
    *modifiers, (_, noun, number) = phrase
    gender = GENDERS[noun]
    suffix = AGREEMENT[gender, number]
    words, adjectives = [], []
    for kind, lemma, _ in modifiers:
        if kind == "det":
            words.append(TARGET_STEMS["det", lemma] + suffix)
        elif kind == "num":
            words.append(TARGET_STEMS["num", lemma])
        else:
            adjectives.append(TARGET_STEMS["adj", lemma] + suffix)
    noun_form = TARGET_STEMS["noun", noun] + (PLURAL_NOUN_SUFFIX if number == "pl" else "")
    return words + [noun_form] + adjectives, gender, number


def translate(source: str) -> str:
    """The target sentence of a source sentence of this grammar (a pure function).

    Raises ValueError for words outside the lexicon or a sentence outside the grammar.
    """
    tagged = []
    for word in source.split():
        if word not in _SURFACE:
            raise ValueError(f"not a word of the synthetic source language: {word!r}")
        tagged.append(_SURFACE[word])
    # Split into chunks: noun phrases end at a noun; the verb and prepositions stand alone.
    chunks, current = [], []
    for item in tagged:
        if item[0] in ("verb", "prep"):
            if current:
                raise ValueError(f"a noun phrase without its noun before {item[1]!r}: {source!r}")
            chunks.append(item)
            continue
        current.append(item)
        if item[0] == "noun":
            chunks.append(current)
            current = []
    if current or len(chunks) < 3 or not isinstance(chunks[0], list) \
            or not isinstance(chunks[1], tuple) or chunks[1][0] != "verb" \
            or not isinstance(chunks[2], list):
        raise ValueError(f"expected SUBJECT VERB OBJECT (PREP NP)*: {source!r}")
    subject, (_, verb, tense), obj, rest = chunks[0], chunks[1], chunks[2], chunks[3:]
    if len(rest) % 2 or not all(isinstance(c, tuple) and c[0] == "prep" for c in rest[::2]):
        raise ValueError(f"expected SUBJECT VERB OBJECT (PREP NP)*: {source!r}")
    subject_words, gender, number = _target_noun_phrase(subject)
    object_words, _, _ = _target_noun_phrase(obj)
    prepositional = []
    for preposition, phrase in zip(rest[::2], rest[1::2]):
        prepositional += _target_noun_phrase(phrase)[0] + [TARGET_STEMS["prep", preposition[1]]]
    verb_words = [TARGET_STEMS["verb", verb] + AGREEMENT[gender, number]]
    if tense == "past":
        verb_words.append(PAST_PARTICLE)
    return " ".join(subject_words + prepositional + object_words + verb_words)


# ----------------------------------------------------------------------------- generator
def _noun_phrase(rng: random.Random) -> list[str]:
    noun = rng.choice(_NOUN_LEMMAS)
    number = "sg" if rng.random() < 0.55 else "pl"
    words = []
    if number == "sg":
        determiner = rng.choices(["the", "a", "this", "that", "my", "your", "our", "their",
                                  "every", "no"], weights=[8, 5, 2, 2, 1, 1, 1, 1, 1, 1])[0]
        words.append(_DETERMINERS[determiner]["sg"])
    else:
        kind = rng.choices(["det", "num", "bare"], weights=[6, 3, 2])[0]
        if kind == "det":
            determiner = rng.choices(["the", "this", "that", "my", "your", "our", "their",
                                      "some", "no"], weights=[8, 2, 2, 1, 1, 1, 1, 2, 1])[0]
            words.append(_DETERMINERS[determiner]["pl"])
        elif kind == "num":
            words.append(rng.choice(_NUMBERS))
    words += rng.sample(_ADJECTIVES, rng.choices([0, 1, 2], weights=[50, 35, 15])[0])
    words.append(noun if number == "sg" else NOUNS[noun])
    return words


def translation_example(rng: random.Random) -> tuple[str, str]:
    """One (source, target) pair, 4 to 20 words on each side."""
    while True:
        subject = _noun_phrase(rng)
        base, third, past = VERBS[rng.choice(_VERB_LEMMAS)]
        if rng.random() < 0.5:
            verb = past
        else:
            verb = third if _SURFACE[subject[-1]][2] == "sg" else base
        words = subject + [verb] + _noun_phrase(rng)
        for _ in range(rng.choices([0, 1, 2], weights=[40, 40, 20])[0]):
            words += [rng.choice(_PREPOSITIONS)] + _noun_phrase(rng)
        source = " ".join(words)
        target = translate(source)
        if 4 <= len(words) <= 20 and 4 <= len(target.split()) <= 20:
            return source, target

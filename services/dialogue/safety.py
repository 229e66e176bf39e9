"""Safety rules applied outside the model: red flags, the notice, and no claims of certainty.

``red_flags(text)`` finds symptoms that need urgent care whatever the model would say; the gateway
then answers with ``urgent_reply`` instead of generating. ``Hedger`` rewrites certainty words as the
tokens stream, so the streamed and the stored answer are the same text.
"""

from __future__ import annotations

import re

from services.dialogue.core import NOTICE

__all__ = ["NOTICE", "RED_FLAGS", "Hedger", "hedge", "red_flags", "urgent_reply"]

_CHEST = r"(chest (pain|tightness|pressure)|pain in (my|the) chest|crushing chest)"
_BREATH = r"(breathless|short(ness)? of breath|can'?t (catch my )?breathe?|cannot breathe|difficulty breathing|" \
          r"trouble breathing|struggling to breathe)"
# (label shown to the client, all patterns that must match)
RED_FLAGS: list[tuple[str, list[str]]] = [
    ("chest pain with breathlessness: possible heart or lung emergency", [_CHEST, _BREATH]),
    ("chest pain spreading to the arm or jaw: possible heart attack",
     [_CHEST, r"(arm|jaw|shoulder)"]),
    ("sudden vision loss: possible eye or brain emergency",
     [r"sudden", r"(can'?t|cannot|could not|couldn'?t) see|(lost|loss of|losing|lose) (my |the )?(vision|sight)|"
      r"went blind|gone blind|blind in|curtain over"]),
    ("vomiting or coughing up blood: possible internal bleeding",
     [r"(vomit(ing|ed)?|throw(ing)? up|threw up|cough(ing|ed)? up)\b.{0,20}\bblood|blood in (my )?vomit|"
      r"black,? tarry stool|black stools?"]),
    ("headache with a stiff neck: possible meningitis", [r"headache", r"stiff neck|neck (is )?stiff"]),
    ("face drooping, slurred speech or one-sided weakness: possible stroke",
     [r"face (is )?droop|drooping face|slurred speech|(weak|numb)(ness)? (on|in) one side|can'?t move my (arm|leg)"]),
    ("swelling of the lips, tongue or throat: possible anaphylaxis",
     [r"(swollen|swelling|swell)\b.{0,20}\b(lips?|tongue|throat)|(lips?|tongue|throat)\b.{0,20}\b(swollen|swelling)"]),
    ("difficulty breathing: possible emergency", [_BREATH]),
    ("sudden hearing loss: needs same-day ENT care", [r"sudden(ly)?\b.{0,30}\b(deaf|lost (my )?hearing|hearing loss|"
                                                      r"can'?t hear)"]),
    ("severe eye pain with vomiting: possible acute glaucoma",
     [r"eye pain|pain in (my|the) eye", r"vomit|throw(ing)? up"]),
    ("thoughts of self-harm: please contact a crisis line now",
     [r"suicid|kill myself|end my life|self[- ]harm|hurt myself"]),
]


def red_flags(text: str) -> list[str]:
    """Labels of the red flags in ``text`` (the patient's words), most specific first, without repeats."""
    low = " ".join(text.lower().split())
    found = [label for label, patterns in RED_FLAGS if all(re.search(p, low) for p in patterns)]
    if any(label.startswith("chest pain with") for label in found):
        found = [label for label in found if not label.startswith("difficulty breathing")]
    return found


def urgent_reply(flags: list[str]) -> str:
    what = "; ".join(f.split(":")[0] for f in flags)
    return (f"What you describe ({what}) can be a medical emergency. Please call your local emergency number "
            "or go to the nearest emergency department now; do not wait for an online answer. "
            "If you are not alone, ask someone to stay with you.")


_CERTAIN = {
    "definitely": "possibly", "certainly": "possibly", "surely": "possibly", "undoubtedly": "possibly",
    "clearly": "possibly", "guaranteed": "likely", "always": "often", "never": "rarely",
}
_WORD = re.compile(r"\b(" + "|".join(_CERTAIN) + r")\b", re.IGNORECASE)
_PHRASES = [(re.compile(r"\byou (definitely |certainly )?have\b", re.IGNORECASE), "you may have"),
            (re.compile(r"\bI(?: am|'m) (?:sure|certain)(?: of it| about it| that)?", re.IGNORECASE), "I think"),
            (re.compile(r"\bfor sure\b", re.IGNORECASE), "possibly"),
            (re.compile(r"\b100 ?%", re.IGNORECASE), "very")]


def hedge(text: str) -> str:
    """Replace claims of certainty ('you have X', 'definitely') with hedged wording."""
    for pattern, repl in _PHRASES:
        text = pattern.sub(lambda m, r=repl: r[0].upper() + r[1:] if m.group(0)[0].isupper() else r, text)

    def word(m: re.Match[str]) -> str:
        repl = _CERTAIN[m.group(1).lower()]
        return repl.capitalize() if m.group(1)[0].isupper() else repl

    return _WORD.sub(word, text)


class Hedger:
    """Streaming ``hedge``: holds back the last few words and any rewrite that reaches into them.

    ``push(piece)`` returns text safe to emit now; ``flush()`` the remainder. The raw text is kept and
    rewritten only once emitted, so the concatenated output equals ``hedge`` of the whole text.
    """

    HOLD_WORDS = 4

    def __init__(self) -> None:
        self.raw = ""

    def push(self, piece: str) -> str:
        self.raw += piece
        starts = [m.start() for m in re.finditer(r"\s\S", self.raw)]
        if len(starts) <= self.HOLD_WORDS:
            return ""
        cut = starts[-self.HOLD_WORDS]
        spans = [m.span() for pattern, _ in _PHRASES for m in pattern.finditer(self.raw)]
        spans += [m.span() for m in _WORD.finditer(self.raw)]
        for s, e in sorted(spans):
            if s < cut < e:
                cut = s
        out, self.raw = hedge(self.raw[:cut]), self.raw[cut:]
        return out

    def flush(self) -> str:
        out, self.raw = hedge(self.raw), ""
        return out

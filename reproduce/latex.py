"""LaTeX text of the tables: escaping every special character, and the marks as math."""

from __future__ import annotations

import unicodedata

# Marks of a cell against the reference row as LaTeX typesets them (Markdown: ▲ / ▼).
LATEX_MARKS = {"better": r"$^\blacktriangle$", "worse": r"$^\blacktriangledown$", "": ""}

# Characters LaTeX treats specially in text, and common Unicode that pdfLaTeX lacks in text mode.
_LATEX_CHARS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"$<$",
    ">": r"$>$",
    "±": r"$\pm$",
    "→": r"$\rightarrow$",
    "←": r"$\leftarrow$",
    "−": r"$-$",
    "–": "--",
    "—": "---",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "≈": r"$\approx$",
    "√": r"$\surd$",
    "…": r"\ldots{}",
    "▲": LATEX_MARKS["better"],
    "▼": LATEX_MARKS["worse"],
}
# Capital Greek letters LaTeX has a macro for; the others look like Latin capitals.
_GREEK_CAPITALS = {"Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi",
                   "Psi", "Omega"}  # fmt: skip


def _latex_char(char: str) -> str:
    if char in _LATEX_CHARS:
        return _LATEX_CHARS[char]
    name = unicodedata.name(char, "")
    for prefix, case in (("GREEK SMALL LETTER ", str.lower), ("GREEK CAPITAL LETTER ", str.title)):
        letter = name.removeprefix(prefix)
        if letter == name or " " in letter:
            continue
        # Unicode spells lambda "LAMDA"; omicron has no macro because it looks like an "o".
        letter = case({"LAMDA": "LAMBDA"}.get(letter, letter))
        if letter in ("omicron", "Omicron") or (
            case is str.title and letter not in _GREEK_CAPITALS
        ):
            return letter[0]  # Alpha, Beta, ... look like the Latin capitals
        return rf"$\{letter}$"
    return char


def latex_escape(text: str) -> str:
    """``text`` safe in LaTeX text mode: specials escaped, ``±``, ``δ``, ``→`` etc. as math."""
    return "".join(_latex_char(c) for c in text)

"""What texocr knows about LaTeX math commands: argument signatures, known names, synonyms.

Tables only (no logic), so the parser, the normalizer and the validator agree on one vocabulary.
The known set covers LaTeX2e math, amsmath, amssymb/amsfonts, common TeX primitives met in formulas,
and the text-mode commands that appear inside math (`\\text`, `\\mbox`, accents in text).
"""

from __future__ import annotations


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _words(text: str) -> frozenset[str]:
    """`"alpha beta"` -> {"\\alpha", "\\beta"}."""
    return frozenset("\\" + w for w in text.split())


# --- argument signatures --------------------------------------------------------------------------
# One letter per argument, read in order after the command:
#   A  a mandatory argument: a {group} or one token (a command token brings its own arguments)
#   O  an optional [bracketed] argument
#   S  an optional `*`
#   D  a delimiter token (`\big(`): never braced
#   L  a TeX dimension (`\kern 3pt`, `\mkern -2mu`): tokens, never braced
_ONE_ARGUMENT = """hat widehat check widecheck tilde widetilde acute grave dot ddot dddot ddddot breve bar vec
        mathring overline underline overbrace underbrace overleftarrow overrightarrow
        overleftrightarrow underleftarrow underrightarrow underleftrightarrow overgroup undergroup
        overlinesegment underlinesegment utilde Overrightarrow
        mathrm mathbf mathit mathcal mathscr mathfrak mathbb mathsf mathtt mathnormal boldsymbol bm
        pmb mathbfit mathsfit mathbold Bbb bold frak operatorname operatorname* text textrm textbf
        textit texttt textsf textup textnormal textsl textsc textmd emph mbox hbox vbox fbox
        boxed phantom hphantom vphantom substack
        mathop mathbin mathrel mathord mathopen mathclose mathpunct mathinner
        label ref eqref color cancel bcancel xcancel
        ensuremath lefteqn llap rlap clap mathllap mathrlap mathclap"""
SIGNATURES: dict[str, str] = dict.fromkeys(_words(_ONE_ARGUMENT), "A")
SIGNATURES.update({
    # fractions and binomials
    "\\frac": "AA", "\\dfrac": "AA", "\\tfrac": "AA", "\\cfrac": "OAA", "\\binom": "AA",
    "\\dbinom": "AA", "\\tbinom": "AA", "\\genfrac": "AAAAAA", "\\sfrac": "AA",
    "\\stackrel": "AA", "\\overset": "AA", "\\underset": "AA", "\\sideset": "AA",
    "\\sqrt": "OA", "\\xrightarrow": "OA", "\\xleftarrow": "OA",
    "\\xleftrightarrow": "OA", "\\xRightarrow": "OA", "\\xLeftarrow": "OA", "\\xmapsto": "OA",
    "\\xlongequal": "OA", "\\xhookrightarrow": "OA", "\\xhookleftarrow": "OA",
    "\\hspace": "SA", "\\vspace": "SA", "\\smash": "OA", "\\makebox": "OOA", "\\framebox": "OOA",
    "\\raisebox": "AOOA", "\\rule": "OAA", "\\scalebox": "AOA", "\\textcolor": "AA",
    "\\colorbox": "AA", "\\fcolorbox": "AAA", "\\mathchoice": "AAAA", "\\href": "AA",
    "\\setlength": "AA", "\\tag": "SA", "\\pmod": "A", "\\pod": "A", "\\mod": "A",
    "\\kern": "L", "\\mkern": "L", "\\mskip": "L", "\\hskip": "L", "\\vskip": "L",
    "\\raise": "L", "\\lower": "L", "\\moveleft": "L", "\\moveright": "L",
})
for _size in ("big", "Big", "bigg", "Bigg"):
    for _suffix in ("", "l", "r", "m"):
        SIGNATURES["\\" + _size + _suffix] = "D"
SIGNATURES["\\middle"] = "D"

# Arguments typeset in text mode: no math rewrites inside them.
TEXT_ARG_COMMANDS = _words("""text textrm textbf textit texttt textsf textup textnormal textsl textsc
    textmd emph mbox hbox vbox fbox makebox framebox raisebox label tag ref eqref href textcolor
    colorbox fcolorbox""")

# Environments and the arguments their \begin takes.
ENV_SIGNATURES: dict[str, str] = {
    "array": "OA", "darray": "OA", "subarray": "A", "tabular": "OA", "alignat": "A",
    "alignat*": "A", "alignedat": "A", "picture": "A", "minipage": "OA",
}
KNOWN_ENVIRONMENTS = _names("""matrix matrix* pmatrix pmatrix* bmatrix bmatrix* Bmatrix Bmatrix*
    vmatrix vmatrix* Vmatrix Vmatrix* smallmatrix array darray subarray tabular cases cases* dcases
    rcases drcases aligned alignedat gathered split align align* alignat alignat* gather gather*
    equation equation* eqnarray eqnarray* multline multline* flalign flalign* CD picture minipage
    displaymath math center""")
# Environments that only wrap a formula (stripped with `$...$`).
WRAPPER_ENVIRONMENTS = frozenset({"equation", "equation*", "displaymath", "math"})

# --- known commands ---------------------------------------------------------------------------------
GREEK = _words("""alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa varkappa
    lambda mu nu xi omicron pi varpi rho varrho sigma varsigma tau upsilon phi varphi chi psi omega
    digamma Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega varGamma varDelta varTheta
    varLambda varXi varPi varSigma varUpsilon varPhi varPsi varOmega""")
BINARY_OPS = _words("""pm mp times div cdot ast star circ bullet oplus ominus otimes oslash odot
    bigcirc dagger ddagger dag ddag amalg cap cup uplus sqcap sqcup vee wedge land lor setminus wr
    diamond bigtriangleup bigtriangledown triangleleft triangleright lhd rhd unlhd unrhd
    dotplus smallsetminus Cap Cup doublecap doublecup barwedge veebar doublebarwedge boxminus
    boxtimes boxdot boxplus divideontimes ltimes rtimes leftthreetimes rightthreetimes curlywedge
    curlyvee circleddash circledast circledcirc centerdot intercal cdotp ldotp""")
RELATIONS = _words("""leq le geq ge neq ne equiv prec succ sim perp preceq succeq simeq mid ll gg
    asymp parallel subset supset approx bowtie subseteq supseteq cong Join sqsubset sqsupset
    sqsubseteq sqsupseteq doteq smile frown in ni notin owns propto vdash dashv models
    leqq leqslant eqslantless lesssim lessapprox approxeq lessdot lll llless lessgtr lesseqgtr
    lesseqqgtr doteqdot Doteq risingdotseq fallingdotseq backsim backsimeq subseteqq Subset
    sqsubset preccurlyeq curlyeqprec precsim precapprox vartriangleleft trianglelefteq vDash
    Vvdash smallsmile smallfrown bumpeq Bumpeq geqq geqslant eqslantgtr gtrsim gtrapprox gtrdot
    ggg gggtr gtrless gtreqless gtreqqless eqcirc circeq triangleq thicksim thickapprox supseteqq
    Supset succcurlyeq curlyeqsucc succsim succapprox vartriangleright trianglerighteq Vdash
    shortmid shortparallel between pitchfork varpropto blacktriangleleft therefore backepsilon
    blacktriangleright because nless nleq nleqslant nleqq lneq lneqq lvertneqq lnsim lnapprox
    nprec npreceq precneqq precnsim precnapprox nsim nshortmid nmid nvdash nvDash ntriangleleft
    ntrianglelefteq nsubseteq subsetneq varsubsetneq subsetneqq varsubsetneqq ngtr ngeq ngeqslant
    ngeqq gneq gneqq gvertneqq gnsim gnapprox nsucc nsucceq succneqq succnsim succnapprox ncong
    nshortparallel nparallel nVDash nVdash ntriangleright ntrianglerighteq nsupseteq nsupseteqq
    supsetneq varsupsetneq supsetneqq varsupsetneqq coloneqq Coloneqq eqqcolon coloneq colon
    approxcolon dblcolon vcentcolon ratio""")
ARROWS = _words("""leftarrow gets rightarrow to leftrightarrow Leftarrow Rightarrow Leftrightarrow
    longleftarrow longrightarrow longleftrightarrow Longleftarrow Longrightarrow Longleftrightarrow
    mapsto longmapsto hookleftarrow hookrightarrow leftharpoonup leftharpoondown rightharpoonup
    rightharpoondown rightleftharpoons leftrightharpoons uparrow downarrow updownarrow Uparrow
    Downarrow Updownarrow nearrow searrow swarrow nwarrow leadsto iff implies impliedby
    dashrightarrow dashleftarrow leftleftarrows leftrightarrows Lleftarrow twoheadleftarrow
    leftarrowtail looparrowleft upuparrows upharpoonleft downharpoonleft multimap rightsquigarrow
    leftrightsquigarrow rightrightarrows rightleftarrows Rrightarrow twoheadrightarrow
    rightarrowtail looparrowright downdownarrows upharpoonright restriction downharpoonright
    curvearrowleft curvearrowright circlearrowleft circlearrowright Lsh Rsh nleftarrow nrightarrow
    nLeftarrow nRightarrow nleftrightarrow nLeftrightarrow longleftrightarrows mapsfrom""")
BIG_OPERATORS = _words("""sum prod coprod int oint iint iiint iiiint idotsint oiint oiiint intop
    smallint bigcap bigcup bigsqcup bigvee bigwedge bigodot bigotimes bigoplus biguplus""")
LOG_LIKE = _words("""arccos arcsin arctan arg cos cosh cot coth csc deg det dim exp gcd hom inf ker lg
    lim liminf limsup ln log max min Pr sec sin sinh sup tan tanh injlim projlim varliminf
    varlimsup varinjlim varprojlim""")
DELIMITERS = _words("""langle rangle lbrace rbrace lbrack rbrack vert Vert lvert rvert lVert rVert
    lfloor rfloor lceil rceil backslash lgroup rgroup lmoustache rmoustache arrowvert Arrowvert
    bracevert ulcorner urcorner llcorner lrcorner llbracket rrbracket""")
MISC_SYMBOLS = _words("""infty partial nabla forall exists nexists emptyset varnothing aleph beth
    gimel daleth hbar hslash imath jmath ell wp Re Im mho prime backprime angle measuredangle
    sphericalangle top bot neg lnot flat natural sharp clubsuit diamondsuit heartsuit spadesuit
    surd triangle triangledown vartriangle blacktriangle blacktriangledown square Box blacksquare
    lozenge blacklozenge bigstar checkmark maltese complement eth Finv Game circledS diagup
    diagdown ldots cdots vdots ddots dots dotsc dotsb dotsm dotsi dotso iddots mathellipsis
    cdotp ldotp colon S P pounds copyright yen degree textdegree hdots AA aa AE ae OE oe O o
    L l ss i j Diamond varspadesuit varheartsuit vardiamondsuit varclubsuit""")
# Commands whose result is an ordinary (Ord) atom, so that a bare group around one renders the same without it
# (`{ \\alpha }`, `{ \\mathbf { K } } ^ { C }`; LaTeX's `\\frac` and amsmath's `\\binom` are groups already).
# Each renders the same both ways in TeX (tests/test_render.py checks every one). Not here: Op (`\\sum`,
# `\\operatorname`), Bin, Rel (`\\vartriangle`), Inner (`\\cdots`, `\\left..\\right`), `\\cfrac` and the arrow
# accents (which differ), class-keeping wrappers (`\\boldsymbol`, `\\mathbin`), and what TeX here cannot render.
# Stacked math accents typeset a script after them differently inside a group and out: normalize keeps those.
MATH_ACCENTS = _words("""hat widehat check tilde widetilde acute grave dot ddot dddot ddddot breve bar vec
    mathring""")
ORD_COMMANDS = (GREEK - _words("omicron")) | (MISC_SYMBOLS - _words("""ldots cdots dots dotsc dotsb dotsm
    dotsi dotso hdots mathellipsis ddots iddots cdotp ldotp colon vartriangle AA aa degree varclubsuit
    vardiamondsuit varheartsuit varspadesuit""")) | MATH_ACCENTS | _words("""overline underline mathrm mathbf mathit mathcal
    mathfrak mathbb mathsf mathtt mathnormal text textrm textbf textit texttt textsf textup textnormal textsl
    textsc textmd mbox hbox fbox boxed mathord sqrt frac dfrac tfrac binom dbinom tbinom genfrac""")
ACCENTS_TEXT = frozenset({"\\'", '\\"', "\\^", "\\~", "\\=", "\\.", "\\`", "\\u", "\\v", "\\H",
                          "\\c", "\\d", "\\b", "\\t", "\\r", "\\k"})
FONT_SWITCHES = {  # old-style switches and the command that replaces `{\rm x}`
    "\\rm": "\\mathrm", "\\bf": "\\mathbf", "\\it": "\\mathit", "\\cal": "\\mathcal",
    "\\tt": "\\mathtt", "\\sf": "\\mathsf", "\\mit": "\\mathit", "\\sl": "\\mathit",
}
STYLES = _words("displaystyle textstyle scriptstyle scriptscriptstyle")
SIZES = _words("""tiny scriptsize footnotesize small normalsize large Large LARGE huge Huge""")
SPACING = frozenset({"\\,", "\\:", "\\;", "\\!", "\\>", "\\", "~"}) | _words(
    """quad qquad enspace enskip thinspace medspace thickspace negthinspace negmedspace
    negthickspace hfill hfil hss space nobreakspace""")
SPACING_WITH_ARGS = _words("hspace hskip kern mkern mskip")
OTHER = _words("""left right middle limits nolimits over atop choose brack brace above buildrel
    displaylimits nonumber notag hline cline vline hdashline relax strut mathstrut boldmath
    unboldmath protect noindent allowbreak nobreak newline cr crcr vrule hrule vcenter
    underbar textbackslash textasciitilde textasciicircum textunderscore textbar textless
    textgreater ensuremath quad bmod mod cfrac unitlength thicklines thinlines linethickness put
    circle line vector multiput oval qbezier dashbox slash lefteqn vphantom operatornamewithlimits
    mathrlap mathllap arraystretch arraycolsep tabcolsep of tfrac dfrac cdotp
    hat smash begin end sp sb root not ldotp dotsc underline overline""")
CONTROL_SYMBOLS = frozenset({"\\,", "\\:", "\\;", "\\!", "\\>", "\\", "\\{", "\\}", "\\|", "\\#",
                             "\\$", "\\%", "\\&", "\\_", "\\\\", "\\*", "\\-", "\\/", "\\@"}) | ACCENTS_TEXT

# Commands that read or write files or run programs: refused, never rendered.
UNSAFE_COMMANDS = _words("""input include InputIfFileExists openin openout read readline write
    immediate write18 special catcode def edef gdef xdef let futurelet newcommand renewcommand
    providecommand DeclareRobustCommand csname endcsname expandafter afterassignment
    usepackage RequirePackage documentclass loop directlua latelua ShellEscape
    verbatiminput lstinputlisting includegraphics jobname outer""")

KNOWN_COMMANDS: frozenset[str] = (
    frozenset(SIGNATURES) | GREEK | BINARY_OPS | RELATIONS | ARROWS | BIG_OPERATORS | LOG_LIKE
    | DELIMITERS | MISC_SYMBOLS | frozenset(FONT_SWITCHES) | STYLES | SIZES | SPACING
    | SPACING_WITH_ARGS | OTHER | CONTROL_SYMBOLS
) - UNSAFE_COMMANDS

# Delimiters accepted after \left, \right, \middle and \big...: characters and commands.
DELIMITER_TOKENS = frozenset({"(", ")", "[", "]", "|", "/", ".", "<", ">", "\\{", "\\}", "\\|",
                              "\\uparrow", "\\downarrow", "\\updownarrow", "\\Uparrow",
                              "\\Downarrow", "\\Updownarrow"}) | DELIMITERS

# --- synonyms (used by the `aggressive` level) -------------------------------------------------------
SYNONYMS: dict[str, str] = {
    "\\lvert": "|", "\\rvert": "|", "\\lVert": "\\|", "\\rVert": "\\|", "\\dfrac": "\\frac", "\\tfrac": "\\frac",
    "\\cfrac": "\\frac", "\\dbinom": "\\binom", "\\tbinom": "\\binom", "\\bold": "\\mathbf",
    "\\Bbb": "\\mathbb", "\\frak": "\\mathfrak", "\\bm": "\\boldsymbol", "\\doublecap": "\\Cap",
    "\\doublecup": "\\Cup", "\\intop": "\\int", "\\cdotp": "\\cdot", "\\textbackslash": "\\backslash",
    "\\varnothing": "\\emptyset", "\\dots": "\\ldots", "\\mathellipsis": "\\ldots",
    "\\hbox": "\\mbox", "\\textrm": "\\text", "\\textnormal": "\\text", "\\textup": "\\text",
    "\\smallint": "\\int", "\\lhd": "\\triangleleft", "\\rhd": "\\triangleright", "\\bmod": "\\mod",
    "\\implies": "\\Longrightarrow", "\\impliedby": "\\Longleftarrow", "\\iff": "\\Longleftrightarrow",
    "---": "- - -", "--": "- -", "\\operatornamewithlimits": "\\operatorname*",
    "\\dag": "\\dagger", "\\ddag": "\\ddagger",  # text daggers (Ord) vs the binary operators
}
# Spellings TeX typesets identically in every context (`\\let` aliases, one glyph under two names;
# tests/test_render.py renders each pair), each mapped to the one more frequent in im2latex; from `standard` on.
_IDENTICAL_DELIMITERS = {"\\vert": "|", "\\Vert": "\\|", "\\lbrace": "\\{", "\\rbrace": "\\}", "\\lbrack": "[",
                         "\\rbrack": "]"}
STANDARD_SYNONYMS: dict[str, str] = {
    "\\sp": "^", "\\sb": "_", "\\le": "\\leq", "\\ge": "\\geq", "\\ne": "\\neq", "\\to": "\\rightarrow",
    "\\gets": "\\leftarrow", "\\land": "\\wedge", "\\lor": "\\vee", "\\lnot": "\\neg", "\\owns": "\\ni",
    "\\ast": "*", "\\Box": "\\square",
    "\\left<": "\\left\\langle", "\\right>": "\\right\\rangle", **_IDENTICAL_DELIMITERS,
    **{side + k: side + v for k, v in _IDENTICAL_DELIMITERS.items() for side in ("\\left", "\\right")},
}

# Unicode characters a model may emit for a LaTeX command (aggressive level).
UNICODE_SYMBOLS: dict[str, str] = {
    "α": "\\alpha", "β": "\\beta", "γ": "\\gamma", "δ": "\\delta", "ε": "\\epsilon",
    "ζ": "\\zeta", "η": "\\eta", "θ": "\\theta", "ι": "\\iota", "κ": "\\kappa", "λ": "\\lambda",
    "μ": "\\mu", "ν": "\\nu", "ξ": "\\xi", "π": "\\pi", "ρ": "\\rho", "σ": "\\sigma", "τ": "\\tau",
    "υ": "\\upsilon", "φ": "\\phi", "χ": "\\chi", "ψ": "\\psi", "ω": "\\omega", "Γ": "\\Gamma",
    "Δ": "\\Delta", "Θ": "\\Theta", "Λ": "\\Lambda", "Ξ": "\\Xi", "Π": "\\Pi", "Σ": "\\Sigma",
    "Φ": "\\Phi", "Ψ": "\\Psi", "Ω": "\\Omega", "×": "\\times", "÷": "\\div", "·": "\\cdot",
    "−": "-", "±": "\\pm", "∓": "\\mp", "≤": "\\leq", "≥": "\\geq", "≠": "\\neq", "≈": "\\approx",
    "≡": "\\equiv", "∞": "\\infty", "∂": "\\partial", "∇": "\\nabla", "∑": "\\sum", "∏": "\\prod",
    "∫": "\\int", "√": "\\sqrt", "→": "\\rightarrow", "←": "\\leftarrow", "⇒": "\\Rightarrow",
    "⇔": "\\Leftrightarrow", "∈": "\\in", "∉": "\\notin", "⊂": "\\subset", "⊆": "\\subseteq",
    "∪": "\\cup", "∩": "\\cap", "∀": "\\forall", "∃": "\\exists", "∅": "\\emptyset",
    "…": "\\ldots", "⋯": "\\cdots", "′": "'", "″": "' '", "∘": "\\circ", "⊗": "\\otimes", "⊕": "\\oplus",
    "⟨": "\\langle", "⟩": "\\rangle", "ℏ": "\\hbar", "ℓ": "\\ell", "∼": "\\sim", "≃": "\\simeq",
    "∝": "\\propto", "⊥": "\\perp", "∥": "\\parallel", "°": "^ { \\circ }",
}

# `\not X` spelled as one command (aggressive level).
NEGATED = {"=": "\\neq", "\\in": "\\notin", "<": "\\nless", ">": "\\ngtr", "\\leq": "\\nleq",
           "\\geq": "\\ngeq", "\\subseteq": "\\nsubseteq", "\\supseteq": "\\nsupseteq",
           "\\sim": "\\nsim", "\\cong": "\\ncong", "\\mid": "\\nmid", "\\parallel": "\\nparallel"}

# amsopn.sty: `\sin` is `\qopname\relax o{sin}` and `\operatorname{sin}` is `\qopname\newmcodes@ o{sin}`, the same
# operator without limits ("o"); `\lim` and `\operatorname*{lim}` are the same with limits ("m"). Standard level.
OPERATORS_NOLIMITS = _words("""arccos arcsin arctan arg cos cosh cot coth csc deg dim exp hom ker lg ln log sec
    sin sinh tan tanh""")
OPERATORS_LIMITS = _words("det gcd inf lim max min Pr sup")

# \operatorname{...} spellings of operators that have their own command (aggressive level).
NAMED_OPERATORS = frozenset(w[1:] for w in LOG_LIKE)

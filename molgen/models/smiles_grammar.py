"""Valid-by-construction decoding for ``smiles-ar``: an incremental SMILES grammar + valence machine.

A batch of ``B`` explicit-hydrogen SMILES strings is read token by token (:func:`advance`, in
place) and :func:`allowed` (:mod:`molgen.models.smiles_lookahead`) says which tokens may come next
(``[B, V]``); :func:`mask` ANDs that with the atom-count budget (:func:`budget_mask`). Per string
the state holds the current atom, the pending bond, the branch stack, the open ring labels (opener,
order written at the opening), every atom's target valence, bond-order sum, aromatic bonds, tree
parent, ancestors, adjacency and ring membership. Hydrogens are atoms, so every atom must end with
exactly its valence from element and charge (H 1, C 4, N 3, O 2, F 1; N+ 4, O- 1, N- 2, C- 3):
strictly valid, RDKit adds no hydrogen. Rules:

- tokens: the atoms of QM9's explicit-H strings (:data:`ATOMS`: C N O F c n o [H] [N+] [O-] [N-]
  [C-] [n+] [n-] [c-]; no other charge, no bracket H counts), ``- = #``, ``( )``, ring labels 1-9
  (never ``. : / \\ ~ %nn``);
- a bond (explicit, implicit, ring opening or closure) must fit the remaining valence of both its
  atoms; ``(`` follows an atom and ``)`` a non-empty branch; ring digits follow an atom or a digit
  (OpenSMILES: never after ``(`` or ``)``); a closure never joins an atom to itself or to an atom
  it is bonded to, and orders written at both ends agree (one written at the closure only binds
  the opener too);
- an atom that is neither the current atom nor a branch point on the stack gets no new bond but
  its open rings': it must be full by then; ``<eos>`` needs depth 0, no open ring, every atom full;
- aromatic atoms: a bond between two of them without a symbol is aromatic (sigma order 1); an
  aromatic atom ends full with no or one pi bond, the pi bonds a perfect matching over aromatic
  bonds (what RDKit's kekulization finds), at most 3 aromatic bonds per atom (RDKit counts 1.5 each);
  every aromatic atom must end in a ring and every pi bond on a ring bond. The matching is not
  written in the string, so the state keeps the possible ones: a dynamic programme over the pi
  status of the atoms that can still get bonds (at most :data:`K_STATES` states per string);
- the lookahead (:mod:`molgen.models.smiles_lookahead`): a token is allowed only when what it
  leaves can still be completed as far as necessary conditions tell: with no atom left, the open
  rings close at the current atom and fill every atom; with atoms left, free valence to attach to,
  enough atoms for what must be filled (lower bounds: one new atom fills at most 3 units of one
  atom, a valence is at most 4, rings need closers not bonded to their openers, a pi bond needs an
  aromatic partner), aromatic atoms still on the path of a possible ring closure, enough slots.

Necessary, not sufficient: a string can still reach a state where no token is allowed (about 0.1 %
of the shipped model's strings unconditionally, ~1 % at guidance w = 3; a random model ~10 %); it
is marked dead and takes the budget mask alone for the rest (:func:`mask`), counted invalid if it
is. Sampling draws with :func:`draw` (cheaper bond check, the same distribution); the likelihood
masks the teacher-forced strings with :func:`sequence_masks`, exactly as sampling does.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache

import torch
from torch import Tensor

from molgen.models.smiles_tokenizer import Vocabulary, atom_charge, atom_symbol

ATOM, BOND, BRANCH, CLOSE, RING, END = 1, 2, 3, 4, 5, 6
VALENCE = {("H", 0): 1, ("H", 1): 0, ("H", -1): 0, ("C", 0): 4, ("C", 1): 3, ("C", -1): 3,
           ("N", 0): 3, ("N", 1): 4, ("N", -1): 2, ("O", 0): 2, ("O", 1): 3, ("O", -1): 1,
           ("F", 0): 1, ("F", 1): 2, ("F", -1): 0}
#: the atom tokens of QM9's explicit-H strings (the others, e.g. ``[C+]``, ``[o+]``, ``[NH3+]``, never occur)
ATOMS = ("C", "N", "O", "F", "c", "n", "o", "[H]", "[N+]", "[O-]", "[N-]", "[C-]", "[n+]", "[n-]", "[c-]")
K_STATES, MAX_DEPTH, LABELS = 8, 12, 10  # pi-matching states, branch depth, ring labels 1..9 (0 unused)
NCLS = 10  # atom classes: 2 * valence + aromatic


class Tables:
    """Per-token classes of a vocabulary: kind, atom valence / aromaticity, bond order, ring label."""

    def __init__(self, vocab: Vocabulary, device: torch.device | str = "cpu") -> None:
        V = len(vocab)
        kind, val, arom, order, label = (torch.zeros(V, dtype=torch.long) for _ in range(5))
        for i, tok in enumerate(vocab.tokens):
            if i == vocab.eos:
                kind[i] = END
            elif tok in ("-", "=", "#"):
                kind[i], order[i] = BOND, "-=#".index(tok) + 1
            elif tok in ("(", ")"):
                kind[i] = BRANCH if tok == "(" else CLOSE
            elif len(tok) == 1 and tok in "123456789":
                kind[i], label[i] = RING, int(tok)
            elif tok in ATOMS:
                kind[i], val[i] = ATOM, VALENCE[atom_symbol(tok), atom_charge(tok)]
                arom[i] = int(tok.lstrip("[")[0].islower())
        self.kind, self.val, self.order, self.label = (x.to(device) for x in (kind, val, order, label))
        self.arom = arom.bool().to(device)
        self.cls = torch.where(kind == ATOM, 2 * val + arom, 0).to(device)
        self.cls_val = (torch.arange(NCLS) // 2).to(device)
        self.cls_arom = (torch.arange(NCLS) % 2 == 1).to(device)


@lru_cache(maxsize=None)
def tables(vocab: Vocabulary, device: str = "cpu") -> Tables:
    """The :class:`Tables` of ``vocab`` on ``device``, built once."""
    return Tables(vocab, device)


@dataclass
class GrammarState:
    """The machine's state for ``B`` strings (``A`` atom slots, ``K`` pi states); see :func:`init_state`."""

    step: Tensor  # [B] tokens read
    count: Tensor  # [B] atoms placed
    cur: Tensor  # [B] current atom (-1: none yet)
    pend: Tensor  # [B] pending bond order (0: none)
    depth: Tensor  # [B] open branches
    nonempty: Tensor  # [B] an atom since the last '('
    ring_ok: Tensor  # [B] a ring digit may come (after an atom / ring digit, or a bond after them)
    dead: Tensor  # [B] no allowed token was left: budget-only mask from then on
    stack: Tensor  # [B, D] branch points
    val: Tensor  # [B, A] target valence
    sig: Tensor  # [B, A] sum of sigma bond orders (aromatic = 1, open rings reserved)
    dep: Tensor  # [B, A] depth in the SMILES tree
    nar: Tensor  # [B, A] aromatic bonds (RDKit counts them 1.5: at most 3 per atom)
    par: Tensor  # [B, A] tree parent (0 for the first atom)
    arom: Tensor  # [B, A] aromatic atom
    inring: Tensor  # [B, A] atom on a closed ring
    ering: Tensor  # [B, A] the bond to the atom's tree parent is on a closed ring
    adj: Tensor  # [B, A, A] bonded
    anc: Tensor  # [B, A, A] anc[b, i, j]: j is i or an ancestor of i in the SMILES tree
    ring_atom: Tensor  # [B, L] opener of each open ring label (-1: closed)
    ring_ord: Tensor  # [B, L] explicit order written at the opening (0: none)
    m: Tensor  # [B, K, A] pi-matched atoms of each possible matching
    pic: Tensor  # [B, K, A] the bond to the tree parent carries the pi bond
    alive: Tensor  # [B, K]

    def select(self, rows: Tensor) -> "GrammarState":
        return GrammarState(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def first_atoms(self, A: int) -> "GrammarState":
        """A view on the first ``A`` atom slots (all placed atoms must be among them)."""
        cut = {"adj": (slice(None), slice(A), slice(A)), "anc": (slice(None), slice(A), slice(A)),
               "m": (slice(None), slice(None), slice(A)), "pic": (slice(None), slice(None), slice(A))}
        per_atom = ("val", "sig", "dep", "nar", "par", "arom", "inring", "ering")
        return GrammarState(**{f.name: getattr(self, f.name)[cut[f.name] if f.name in cut else
                                                              (slice(None), slice(A)) if f.name in per_atom else ...]
                               for f in fields(self)})


def init_state(B: int, max_atoms: int, device: torch.device | str = "cpu") -> GrammarState:
    """The state before the first token, for strings of at most ``max_atoms`` atoms."""
    A = max_atoms + 1
    z = lambda *s: torch.zeros(*s, dtype=torch.long, device=device)  # noqa: E731
    f = lambda *s: torch.zeros(*s, dtype=torch.bool, device=device)  # noqa: E731
    return GrammarState(step=z(B), count=z(B), cur=z(B) - 1, pend=z(B), depth=z(B), nonempty=f(B) | True,
                        ring_ok=f(B), dead=f(B), stack=z(B, MAX_DEPTH), val=z(B, A), sig=z(B, A), dep=z(B, A),
                        nar=z(B, A), par=z(B, A), arom=f(B, A), inring=f(B, A), ering=f(B, A), adj=f(B, A, A),
                        anc=f(B, A, A), ring_atom=z(B, LABELS) - 1, ring_ord=z(B, LABELS), m=f(B, 1, A),
                        pic=f(B, 1, A), alive=f(B, 1) | True)


def _at(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, idx[b]]`` for ``x [B, A, ...]``."""
    return x[torch.arange(x.shape[0], device=x.device), idx.clamp(min=0)]


def _col(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, :, idx[b, ...]]`` for ``x [B, K, A]`` and ``idx [B]`` or ``[B, J]`` -> ``[B, K]`` / ``[B, K, J]``."""
    i = idx.clamp(min=0)
    i = i[:, None, None] if i.dim() == 1 else i[:, None, :]
    out = x.gather(2, i.expand(x.shape[0], x.shape[1], i.shape[-1]))
    return out[..., 0] if idx.dim() == 1 else out


def _ceil3(x: Tensor) -> Tensor:
    return torch.div(x.clamp(min=0) + 2, 3, rounding_mode="floor")


def _grow_stack(st: GrammarState, free: Tensor, cur_is_top: Tensor) -> Tensor:
    """``[B, D]``: stack slots (other than the current atom) whose atom can still take a branch."""
    sl = torch.arange(MAX_DEPTH, device=free.device)
    fmax = torch.where(st.alive[..., None], free, -9).max(1).values
    return ((sl < st.depth[:, None]) & ~(cur_is_top[:, None] & (sl == (st.depth - 1)[:, None]))
            & (fmax.gather(1, st.stack.clamp(min=0)) >= 1))


def budget_mask(vocab: Vocabulary, count: Tensor, n_atoms: Tensor, t: Tensor | int, max_len: int) -> Tensor:
    """The atom-count budget ``[..., V]`` at 1-based position ``t`` (``count`` atoms before it, N =
    ``n_atoms``): see :mod:`molgen.models.smiles_ar`."""
    is_atom, special, opens = (z.to(count.device) for z in (vocab.is_atom, vocab.is_special, vocab.opens))
    eos = torch.zeros_like(is_atom)
    eos[vocab.eos] = True
    need = (n_atoms - count)[..., None]
    slots = max_len - torch.as_tensor(t, device=count.device) + 1
    slots = slots[..., None] if slots.dim() else slots
    allowed = ~special.expand(*need.shape[:-1], -1)
    allowed = allowed & ((need > 0) | ~opens)  # after the N-th atom: no atom, branch or dot
    allowed = allowed & ((need == 0) | ~eos)  # before it: no end
    forced = (need > 0) & (need >= slots - 1)  # the atoms still needed fill the remaining slots
    allowed = allowed & (~forced | is_atom)
    return allowed & ((slots > 1) | eos)  # the last slot ends the string


def _compact(m: Tensor, pic: Tensor, alive: Tensor, relevant: Tensor, K: int) -> tuple[Tensor, Tensor, Tensor]:
    """Drop duplicate pi states (same status on the atoms that still matter) and keep at most ``K``."""
    A = m.shape[-1]
    key = torch.cat([m & relevant[:, None], pic], -1)
    same = (key[:, :, None] == key[:, None, :]).all(-1)  # [B, K2, K2]
    earlier = torch.ones(same.shape[1:], dtype=torch.bool, device=m.device).tril(-1)
    keep = alive & ~(same & alive[:, None, :] & earlier).any(-1)
    K = max(1, min(K, int(keep.sum(1).max())))  # as many states as the most any string has
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :K]
    idx = order[..., None].expand(-1, -1, A)
    return m.gather(1, idx), pic.gather(1, idx), keep.gather(1, order)


def advance(tab: Tables, st: GrammarState, tok: Tensor) -> None:
    """Read token ``tok [B]`` of every string, in place (dead strings are left as they are)."""
    B, _, A = st.m.shape
    dev = st.m.device
    ar = torch.arange(A, device=dev)
    kind = tab.kind[tok]
    st.dead |= kind == 0
    live = ~st.dead
    is_ = lambda k: live & (kind == k)  # noqa: E731
    has_cur, c = st.cur >= 0, st.cur
    oh_c = (ar == c[:, None]) & has_cur[:, None]
    free = (st.val - st.sig)[:, None] - st.m.long()
    fc, mc, ac = _col(free, c), _col(st.m, c), _at(st.arom, c)
    top = torch.where(st.depth > 0, _at(st.stack, st.depth - 1), -1)
    cur_is_top = has_cur & (top == c)
    opener = (st.ring_atom >= 0)[..., None] & (st.ring_atom[..., None] == ar)
    has_unspec = (opener & (st.ring_ord == 0)[..., None]).any(1)
    hu_c = _at(has_unspec, c)[:, None]
    rule = lambda f, mm: (f == 0) | ((f == 1) & ~mm & ac[:, None] & hu_c)  # noqa: E731
    alive, alive_pi = st.alive.clone(), torch.zeros_like(st.alive)
    pair = torch.zeros(B, A, dtype=torch.bool, device=dev)  # the two atoms of a pi bond
    # atoms
    a = is_(ATOM)
    nf = a & has_cur
    v, al = tab.val[tok], tab.arom[tok]
    k = torch.where(st.pend > 0, st.pend, 1)
    i = st.count.clamp(max=A - 1)
    oh_i = (ar == i[:, None]) & a[:, None]
    st.val = torch.where(oh_i, v[:, None], st.val)
    st.arom = torch.where(oh_i, al[:, None], st.arom)
    st.sig = st.sig + torch.where(oh_i & nf[:, None], k[:, None], 0) + torch.where(oh_c & nf[:, None], k[:, None], 0)
    st.dep = torch.where(oh_i, torch.where(nf, _at(st.dep, c) + 1, 0)[:, None], st.dep)
    st.par = torch.where(oh_i, c.clamp(min=0)[:, None], st.par)
    anc_i = (_at(st.anc, c) & nf[:, None]) | (ar == i[:, None])
    st.anc = torch.where(oh_i[..., None], anc_i[:, None, :], st.anc)
    link = (oh_c & nf[:, None])[:, :, None] & oh_i[:, None, :]
    st.adj = st.adj | link | link.transpose(1, 2)
    kk = k[:, None]
    arb = (nf & (st.pend == 0) & ac & al)[:, None]
    st.nar = torch.where(oh_i, arb.long(), st.nar + (oh_c & arb).long())
    finish = (nf & ~cur_is_top)[:, None]  # the old current atom leaves for good
    fmax = torch.where(st.alive, fc, -9).max(1).values
    help_ = ((st.ring_atom >= 0).any(1) | _grow_stack(st, free, cur_is_top).any(1) | (cur_is_top & (fmax - k >= 1)))
    grow = lambda f: (~al | (f >= 2) | ((f >= 1) & help_))[:, None]  # noqa: E731  aromatic atoms need a ring
    base_ok = (fc >= kk) & (~finish | rule(fc - kk, mc)) & grow(v - k)
    pi_ok = (arb & ~mc & (fc >= kk + 1) & (v - k >= 2)[:, None] & help_[:, None]  # a ring must pass the pi bond
             & (~finish | rule(fc - kk - 1, torch.ones_like(mc))))
    alive = torch.where(nf[:, None], alive & base_ok, alive)
    alive_pi = torch.where(nf[:, None], st.alive & pi_ok, alive_pi)
    pair = torch.where(nf[:, None], oh_c | oh_i, pair)
    pic_new = st.pic | (oh_i & nf[:, None])[:, None]
    st.cur = torch.where(a, i, st.cur)
    st.count = st.count + a.long()
    # bonds, branches
    b = is_(BOND)
    alive = torch.where(b[:, None], alive & (fc >= tab.order[tok][:, None]), alive)
    br = is_(BRANCH)
    alive = torch.where(br[:, None], alive & (fc >= 1), alive)
    slot = torch.arange(MAX_DEPTH, device=dev)
    st.stack = torch.where(br[:, None] & (slot == st.depth[:, None]), c[:, None], st.stack)
    cl = is_(CLOSE)
    alive = torch.where(cl[:, None], alive & rule(fc, mc), alive)
    st.cur = torch.where(cl, top, st.cur)
    st.depth = st.depth + br.long() - cl.long()
    # ring labels
    r = is_(RING)
    j = tab.label[tok][:, None]
    o = st.ring_atom.gather(1, j)[:, 0]
    q = st.ring_ord.gather(1, j)[:, 0]
    ro, rc = r & (o < 0), r & (o >= 0)
    rr = torch.where(ro, st.pend.clamp(min=1), torch.where(st.pend > 0, st.pend, q.clamp(min=1)))
    st.sig = st.sig + torch.where(oh_c & r[:, None], rr[:, None], 0)
    alive = torch.where(r[:, None], alive & (fc >= rr[:, None]), alive)
    lab_hit = torch.arange(LABELS, device=dev) == j
    st.ring_atom = torch.where(lab_hit & ro[:, None], c[:, None], torch.where(lab_hit & rc[:, None], -1, st.ring_atom))
    st.ring_ord = torch.where(lab_hit & r[:, None], torch.where(ro, st.pend, 0)[:, None], st.ring_ord)
    oh_o = (ar == o[:, None]) & rc[:, None]
    link = (oh_c & rc[:, None])[:, :, None] & oh_o[:, None, :]
    st.adj = st.adj | link | link.transpose(1, 2)
    anc_o, anc_c = _at(st.anc, o), _at(st.anc, c)
    common = anc_o & anc_c
    deepest = torch.where(common, st.dep, -1).max(1, keepdim=True).values
    diff = anc_o ^ anc_c
    st.inring = st.inring | ((diff | (common & (st.dep == deepest))) & rc[:, None])
    st.ering = st.ering | (diff & rc[:, None])
    dlt = torch.where(rc & (q == 0) & (st.pend > 1), st.pend - 1, 0)  # order written at the closure only
    st.sig = st.sig + torch.where(oh_o, dlt[:, None], 0)
    fo, mo = _col(free, o) - dlt[:, None], _col(st.m, o)
    on_stack = torch.zeros(B, A + 1, dtype=torch.bool, device=dev).scatter_(
        1, torch.where(slot < st.depth[:, None], st.stack, A), True)[:, :A]
    o_closed = (~_at(on_stack, o) & (o != st.cur))[:, None]
    opener = (st.ring_atom >= 0)[..., None] & (st.ring_atom[..., None] == ar)
    hu_o = _at((opener & (st.ring_ord == 0)[..., None]).any(1), o)[:, None]
    ao = _at(st.arom, o)[:, None]
    rule_o = lambda f, mm: ~o_closed | (f == 0) | ((f == 1) & ~mm & ao & hu_o)  # noqa: E731
    arj = (rc & (st.pend == 0) & (q == 0) & ac & ao[:, 0])[:, None]
    st.nar = st.nar + ((oh_c | oh_o) & arj).long()
    alive = torch.where(rc[:, None], alive & (fo >= 0) & rule_o(fo, mo), alive)
    pi_ok = arj & ~mc & ~mo & (fc >= rr[:, None] + 1) & (fo >= 1) & rule_o(fo - 1, torch.ones_like(mo))
    alive_pi = torch.where(rc[:, None], st.alive & (fc >= rr[:, None]) & pi_ok, alive_pi)
    pair = torch.where(rc[:, None], oh_c | oh_o, pair)
    # the next token
    st.pend = torch.where(b, tab.order[tok], torch.where(a | r, 0, st.pend))
    st.nonempty = torch.where(a | cl, True, torch.where(br, False, st.nonempty))
    st.ring_ok = torch.where(a, True, torch.where(br | cl, False, st.ring_ok))
    st.step = st.step + live.long()
    # pi states: without / with the new pi bond, deduplicated
    m2 = torch.cat([st.m, st.m | pair[:, None]], 1)
    pic2 = torch.cat([st.pic, pic_new], 1) & ~st.ering[:, None]
    relevant = (ar == st.cur[:, None]) | on_stack | opener.any(1)
    st.m, st.pic, st.alive = _compact(m2, pic2, torch.cat([alive, alive_pi], 1), relevant, K_STATES)


def mask(tab: Tables, st: GrammarState, base: Tensor, n_atoms: Tensor, max_len: int, bonds: bool = True) -> Tensor:
    """The grammar mask AND ``base`` (the budget mask); strings left with no token become dead and
    take ``base`` from then on."""
    out = allowed(tab, st, n_atoms, max_len, bonds) & base
    st.dead |= ~out.any(-1)
    return torch.where(st.dead[:, None], base, out)


def draw(tab: Tables, st: GrammarState, base: Tensor, n_atoms: Tensor, max_len: int, sample, u: Tensor,
         u2: Tensor, exact: bool = False) -> Tensor:
    """One token per string, ``sample(mask, rows, uniforms)`` drawing from the masked distribution of
    those rows: that of :func:`mask`, computed cheaper unless ``exact``. Draw (uniforms ``u``) under
    the ``bonds=False`` superset, then redraw (``u2``) the strings whose bond has no continuation
    from their exact masks: every other token agrees in both masks, so this rejection sampling
    gives the exact distribution (not once ``sample`` filters, e.g. top-k, hence ``exact``)."""
    if exact:
        return sample(mask(tab, st, base, n_atoms, max_len), slice(None), u)
    nxt = sample(mask(tab, st, base, n_atoms, max_len, bonds=False), slice(None), u)
    rows = torch.nonzero((tab.kind[nxt] == BOND) & ~st.dead).flatten()
    if rows.numel():
        rows = rows[~allowed(tab, st.select(rows), n_atoms[rows], max_len, tab.order[nxt[rows]])]
    if rows.numel():
        sub = st.select(rows)
        exact_mask = mask(tab, sub, base[rows], n_atoms[rows], max_len)
        st.dead[rows] = sub.dead
        nxt[rows] = sample(exact_mask, rows, u2[rows])
    return nxt


class Decoder:
    """The grammar of one sampling chunk of ``B`` strings of ``n_atoms [B]`` atoms: :meth:`draw` each
    string's next token, :meth:`read` it. Finished strings leave the state (no more grammar work);
    the others compute exactly as they would in the full batch."""

    def __init__(self, vocab: Vocabulary, n_atoms: Tensor, max_len: int) -> None:
        self.tab, self.n, self.max_len = tables(vocab, str(n_atoms.device)), n_atoms, max_len
        self.rows = torch.arange(n_atoms.numel(), device=n_atoms.device)
        self.state = init_state(n_atoms.numel(), int(n_atoms.max()), n_atoms.device)

    def draw(self, base: Tensor, sample, u: Tensor, gen: torch.Generator, exact: bool, done: Tensor) -> Tensor:
        """``[B]`` next tokens (0 for finished strings): :func:`draw` with second uniforms from ``gen``."""
        u2 = torch.rand(u.numel(), generator=gen, dtype=torch.float64).to(u.device)
        keep = ~done[self.rows]
        if not bool(keep.all()):
            self.rows, self.state = self.rows[keep], self.state.select(keep)
        r = self.rows
        out = torch.zeros(u.numel(), dtype=torch.long, device=u.device)
        out[r] = draw(self.tab, self.state, base[r], self.n[r], self.max_len, lambda m, rr, uu: sample(m, r[rr], uu),
                      u[r], u2[r], exact)
        return out

    def read(self, tok: Tensor) -> None:
        advance(self.tab, self.state, tok[self.rows])


def sequence_masks(tab: Tables, targets: Tensor, base: Tensor, n_atoms: Tensor, max_len: int,
                   pad: int) -> Tensor:
    """``[B, T, V]`` masks of teacher-forced strings ``targets [B, T]`` (``base``: their budget masks),
    exactly as :func:`mask` gives them at sampling; a string whose token is not allowed is dead after it."""
    B, T = targets.shape
    st = init_state(B, int(n_atoms.max()), targets.device)
    out = []
    for t in range(T):
        mt = mask(tab, st, base[:, t], n_atoms, max_len)
        out.append(mt)
        tok = targets[:, t]
        st.dead |= ~mt.gather(1, tok[:, None])[:, 0] & (tok != pad)
        advance(tab, st, tok)
    return torch.stack(out, 1)


from molgen.models.smiles_lookahead import allowed  # noqa: E402  (it imports this module)

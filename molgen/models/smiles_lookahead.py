"""The lookahead of the ``smiles-ar`` grammar mask: :func:`allowed`, the tokens that may come next.

For every candidate token class (an atom class by valence and aromaticity, with or without a pending
bond, each ring label to close or a new one, ``(``, ``)``, the end) it computes from the state of
:mod:`molgen.models.smiles_grammar` what reading that token would leave, per string and per pi
matching state (tensors ``[B, K, pi, class]``), and keeps the token when the local rules hold and
:func:`_feasible` finds no reason that the rest cannot be completed with the atoms and slots left.
A bond is kept when an atom or ring digit may follow it (the same computation with that bond
pending). Aromatic atoms not yet in a ring must stay *rescuable*: on the path of a later ring
closure (an open ring's, or a new ring through a branch point or the atom itself), which also
bounds the atoms still needed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from molgen.models.smiles_grammar import (ATOM, BOND, BRANCH, CLOSE, END, LABELS, MAX_DEPTH, NCLS, RING,
                                          GrammarState, Tables, _at, _ceil3, _col, _grow_stack)


def _ring_paths(st: GrammarState, ring_atom: Tensor) -> tuple[Tensor, Tensor]:
    """Atoms a later closure of each open ring can still put in a ring, ``[B, L, Y, A]``, for a closer
    at or below ``y`` = each used stack slot, then the current atom; and ``[B, L, A]`` the tree edges
    (by child atom) the closure at the current atom puts in a ring."""
    A, D = st.anc.shape[1], int(st.depth.max())
    y = torch.cat([st.stack[:, :D], st.cur[:, None]], 1)
    yv = torch.cat([torch.arange(D, device=y.device) < st.depth[:, None], (st.cur >= 0)[:, None]], 1)
    anc_y = st.anc.gather(1, y.clamp(min=0)[..., None].expand(-1, -1, A))
    anc_o = st.anc.gather(1, ring_atom.clamp(min=0)[..., None].expand(-1, -1, A))
    common = anc_o[:, :, None] & anc_y[:, None]
    lca = common & (st.dep[:, None, None] == common.sum(-1, keepdim=True) - 1)  # the common ones: a root chain
    diff = anc_o[:, :, None] ^ anc_y[:, None]
    path = (diff | lca) & ((ring_atom >= 0)[:, :, None] & yv[:, None])[..., None]
    return path, diff[:, :, -1]


def _feasible(R, S, fc, cpi, Us, Ls, Wn, wok, P, Q, depth, sum_ord, clos_sum, all_clos, need, mult, nsr=0):
    """Whether a completion may exist (the budget rules of the module docstring; all broadcast).

    ``fc``: free valence of the current atom; ``cpi``: it can still take a pi bond by a ring closure;
    ``Us``, ``Ls``: free valence / atoms needed on the stack; ``Wn``: other atoms with free valence;
    ``wok``: the one such atom can be filled by a pi ring closure at the current atom; ``P``: left
    atoms waiting for a pi ring closure; rings: ``Q`` open, ``sum_ord`` their orders, ``clos_sum``
    those closable at the current atom (counts per order, packed 1 / 16 / 256; a ring whose opener
    waits for its pi bond counts 2, the pi bond included), ``all_clos`` all closable there, ``need``
    atoms they need, ``mult`` the most open at one atom, ``nsr`` those of the one branch point left
    to fill (its own new atoms cannot close them). No atom left: the open rings must close at the
    current atom, filling every atom. Atoms left: lower bounds on how many, one per 3 units of an
    atom to fill (one bond), per 3 units of ring orders, per pi waiting, per ring of one opener; and
    the valence sum: the new atoms (valence <= 4) fill all that and the bonds of their own tree.
    """
    zero = all_clos & ((Wn == 0) | ((Wn == 1) & wok & cpi)) & (fc == sum_ord + Wn)
    clos_sum = torch.as_tensor(clos_sum, device=fc.device)  # packed counts of closable orders 1, 2, 3
    n1, n2, n3 = clos_sum % 16, clos_sum // 16 % 16, clos_sum // 256
    cpi = cpi & (fc >= 2)  # a pi ring closure takes two units
    lim = torch.where(Us >= 1, fc, fc - 1)  # leave a unit for the next atom to attach to
    cap = torch.zeros_like(lim)  # the largest sum of closable ring orders within lim
    for b2, b3 in ((0, 0), (1, 0), (2, 0), (0, 1), (1, 1)):
        rem = lim - 2 * b2 - 3 * b3
        got = 2 * b2 + 3 * b3 + torch.minimum(n1, rem.clamp(min=0))
        cap = torch.maximum(cap, torch.where((rem >= 0) & (n2 >= b2) & (n3 >= b3), got, 0))
    L = Ls + torch.maximum(_ceil3(fc - cap), torch.as_tensor(nsr, device=fc.device))
    for x in (need, _ceil3(sum_ord + P - cap), P - cpi.long(), mult - (cap >= 1).long()):
        L = torch.maximum(L, x)
    att = fc + Us - cap
    units = fc + Us + sum_ord + P - 2 * cap + 2 * (R - att).clamp(min=0)
    more = (fc + Us >= 1) & (R >= L) & (4 * R >= units)
    return torch.where(R == 0, zero, more) & (S >= R + Q + depth + 1)


def allowed(tab: Tables, st: GrammarState, n_atoms: Tensor, max_len: int,
            bonds: bool | Tensor = True) -> Tensor:
    """``[B, V]``: the tokens allowed next (:mod:`molgen.models.smiles_grammar`). A bond is allowed
    when an atom or ring digit may follow it; ``bonds=False`` only checks that it fits the current
    atom (a superset, 4x cheaper: :func:`~molgen.models.smiles_grammar.draw`); ``bonds`` a ``[B]``
    tensor of orders: ``[B]``, whether that bond is allowed."""
    st = st.first_atoms(min(st.m.shape[2], int(st.count.max()) + 1))  # the slots in use (placed atoms)
    B, K, A = st.m.shape
    dev = st.m.device
    ar = torch.arange(A, device=dev)
    has_cur, c = st.cur >= 0, st.cur
    placed = ar < st.count[:, None]
    is_cur = ar == c[:, None]
    slot = torch.arange(MAX_DEPTH, device=dev) < st.depth[:, None]
    _on = lambda sl: torch.zeros(B, A + 1, dtype=torch.bool, device=dev).scatter_(  # noqa: E731
        1, torch.where(sl, st.stack, A), True)[:, :A]  # [B, A]: the atoms of these stack slots
    on_stack = _on(slot)
    top = torch.where(st.depth > 0, _at(st.stack, st.depth - 1), -1)
    cur_is_top = has_cur & (top == c)
    free = (st.val - st.sig)[:, None] - st.m.long()  # [B, K, A]
    used = (st.ring_atom >= 0).any(0).nonzero()
    Lu = int(used.max()) + 1 if used.numel() else 1  # labels past the last one in use: all closed
    rat, rod = st.ring_atom[:, :Lu], st.ring_ord[:, :Lu]
    lab_open = rat >= 0  # [B, L]
    oj = rat.clamp(min=0)
    opener = lab_open[..., None] & (rat[..., None] == ar)  # [B, L, A]
    unspec = opener & (rod == 0)[..., None]
    has_unspec = unspec.any(1)
    ordj = rod.clamp(min=1) * lab_open
    Q, sum_ord = lab_open.sum(1), ordj.sum(1)
    distinct = (opener.sum(1) <= 1).all(1)
    closed = placed & ~on_stack & ~is_cur
    piable = st.arom[:, None] & ~st.m
    alive = st.alive
    gs = _grow_stack(st, free, cur_is_top)  # [B, D] branch points that can take another branch
    g1 = torch.where(gs.any(1), 1, 2)  # atoms to close a ring opened at the current atom
    fmax = torch.where(alive[..., None], free, -9).max(1).values  # [B, A]
    fc, mc, ac = _col(free, c), _col(st.m, c), _at(st.arom, c)  # [B, K], [B, K], [B]
    cpi = ac[:, None] & ~mc
    posW = (free > 0) & (placed & ~is_cur)[:, None]
    wcap = (free == 1) & piable & has_unspec[:, None]
    Wn = posW.sum(-1)
    stack_x = (on_stack & ~is_cur)[:, None]
    Us = (free * stack_x).sum(-1)
    Ls = (_ceil3(free) * stack_x).sum(-1)  # a pi bond of a branch point also needs a new atom
    P = ((free == 1) & closed[:, None]).sum(-1)
    R0 = (n_atoms - st.count)[:, None]
    S1 = (max_len - st.step - 1)[:, None]
    dQ, dd, dso = Q[:, None], st.depth[:, None], sum_ord[:, None]
    # rings relative to the current atom
    clos_c = lab_open & (rat != c[:, None]) & ~_at(st.adj, c).gather(1, oj)  # [B, L]
    packw = torch.where(rod <= 1, 1, torch.where(rod == 2, 16, 256)) * lab_open
    at_c = lab_open & (rat == c[:, None])  # rings opened at the current atom
    cur_opens = at_c.any(1)
    # atoms a ring needs for its closer: 0 if the current atom can close it, else 1 if an atom can be
    # attached to another atom than its opener (the current one, a branch point), else 2
    gsa = _on(gs)
    other_gs = gs.sum(1)[:, None] - gsa.gather(1, oj).long() >= 1  # [B, L]
    cnt = opener.sum(1)  # [B, A] open rings per atom
    blocked_s = cnt.gather(1, st.stack.clamp(min=0)) > 0  # branch points with an open ring of their own
    gs_blocked = ~(gs & ~blocked_s).any(1)  # every growable branch point opens a ring
    f_c = _at(fmax, c)
    # unspecified open ring of each atom closable at the current atom
    u_c = (unspec & clos_c[..., None]).any(1)
    g = posW & wcap & u_c[:, None]
    # ring closures open at the new atom of an atom token: every opener but the current atom
    nclos = lab_open & (rat != c[:, None])
    n_all = ((nclos == lab_open).all(1) & distinct)[:, None, None]
    wok_atom = ((Wn == 1) & (posW & wcap).any(-1))[..., None]
    mult = opener.sum(1).max(1).values[:, None]  # most open rings at one atom
    unspec_ar = lab_open & (rod == 0) & st.arom.gather(1, oj)  # rings a pi closure can use
    u_ar_c = (unspec_ar & clos_c).any(1)[:, None]
    u_ar_n = (unspec_ar & nclos).any(1)[:, None, None]
    cnt_c = _at(cnt, c)[:, None]
    # rings of the one branch point that still needs atoms, when those atoms cannot close them
    sfree = (free > 0) & stack_x  # [B, K, A]
    one_s = sfree.sum(-1) == 1
    unclos = (opener & ~clos_c[..., None]).sum(1)  # [B, A] open rings not closable at the current atom
    nsr_c = torch.where(one_s, (sfree * unclos[:, None]).sum(-1), 0)  # [B, K]
    nsr_all = torch.where(one_s, (sfree * cnt[:, None]).sum(-1), 0)  # the current atom closes none
    clos_at = (opener & clos_c[..., None]).sum(1)  # [B, A]
    unclos_j = unclos[:, None] + (ar == oj[..., None]).long() * (clos_at.gather(1, oj) - 1)[..., None]
    nsr_j = torch.where(one_s[..., None], (sfree[:, :, None] * unclos_j[:, None]).sum(-1), 0)  # [B, K, L]
    mult_after = (cnt[:, None] - (ar == oj[..., None]).long()).max(-1).values[:, None]  # [B, 1, L]
    has_unspec_c = _at(has_unspec, c)[:, None, None]
    free_label = (st.ring_atom[:, 1:] < 0).any(1)
    # what closing each ring label does
    q, aro = rod, st.arom.gather(1, oj)
    fo, mo = _col(free, oj), _col(st.m, oj)  # [B, K, L]
    o_closed, o_stack = closed.gather(1, oj)[:, None], on_stack.gather(1, oj)[:, None]
    # rings whose (left) opener waits for its pi bond: only an aromatic closer with a pi bond to give
    pend_o = (lab_open & (q == 0) & aro)[:, None] & o_closed & (fo == 1) & ~mo  # [B, K, L]
    packed = lambda cl, pend, px: (cl * torch.where(pend, torch.where(px, 16, 0), packw.view(  # noqa: E731
        B, *[1] * (pend.dim() - 2), Lu))).sum(-1)
    other_unspec_o = (unspec.sum(1).gather(1, oj) - (q == 0).long() > 0)[:, None]
    eye = torch.eye(Lu, dtype=torch.bool, device=dev)
    open_after = lab_open[:, None, :] & ~eye  # [B, closed label, other label]
    clos_after = clos_c[:, None, :] & ~eye & (rat[:, None, :] != oj[:, :, None])
    all_after = ((clos_after == open_after).all(-1) & distinct[:, None])[:, None]
    g_o = g.sum(-1, keepdim=True) - _col(g.long(), oj)  # [B, K, L]: candidates w other than the opener
    u_ar_after = ((open_after & clos_after & unspec_ar[:, None, :]).any(-1))[:, None]
    # aromatic atoms must end in rings and pi bonds on ring bonds: what each token leaves rescuable,
    # i.e. on the path of a later ring closure (from an open ring, or a new ring through the stack)
    path, diff_c = _ring_paths(st, rat)
    D, BIG = MAX_DEPTH, 10 ** 6
    sl = torch.arange(D, device=dev)
    sidx = st.stack.clamp(min=0)
    sdep = st.dep.gather(1, sidx)
    s_paths = (path[:, :, :-1] & gs[:, None, :path.shape[2] - 1, None]).any(2)  # [B, L, A]
    c_paths = path[:, :, -1]  # closer at or below the current atom
    smin = torch.where(gs, sdep, BIG).min(1).values
    smax = torch.where(gs, sdep, -1).max(1).values
    smin_pop = torch.where(gs & (sl < (st.depth - 1)[:, None]), sdep, BIG).min(1).values
    anc_c, dep_c = _at(st.anc, c), _at(st.dep, c)
    waiting = st.arom & placed & ~st.inring
    # a ring through a root-path atom needs growable atoms at or below it (the opener's side) and on
    # the stack at or above it (the closer's), not both the atom itself; or two branches of the atom
    gs2 = gsa & (fmax >= 2)
    _between = lambda d, dmax, smin: ((d < dmax) & (d >= smin)) | ((d <= dmax) & (d > smin))  # noqa: E731

    def resc(paths, anc_x, dmax, smin_x, xself):
        """What stays rescuable, and how many atoms that takes at least: 0 by an open ring's closure,
        1 by a new ring through a branch point, 2 by a new ring at the atom itself."""
        l0 = st.inring | paths
        l1 = anc_x & _between(st.dep, dmax[..., None], smin_x[..., None])
        w = waiting & ~l0
        return l0 | l1 | xself | gs2, torch.where((w & ~l1).any(-1), 2, w.any(-1).long())

    lost = lambda r: (waiting & ~r[0]).any(-1)  # noqa: E731
    edge = lambda r: r & r.gather(-1, st.par.view(B, *[1] * (r.dim() - 2), A).expand_as(r))  # noqa: E731  both ends
    pic_lost = lambda r, er: (st.pic & ~er[:, None] & ~edge(r[0])[:, None]).any(-1)  # noqa: E731
    s_any, c_any = s_paths.any(1), c_paths.any(1)

    def resc_atom(k: Tensor, ig: bool) -> Tensor:  # after an atom token (the new atom is the current one)
        cg = cur_is_top & (f_c - k >= 1)
        dmax = torch.maximum(smax, torch.where(cg, dep_c, -1))
        dmax = torch.maximum(dmax, dep_c + 1) if ig else dmax
        return resc(s_any | (c_any & (cg | ig)[:, None]), anc_c, dmax,
                    torch.where(cg, torch.minimum(smin, dep_c), smin), is_cur & (cur_is_top & (f_c - k >= 2))[:, None])

    x_top = (ar == top[:, None]) & (_at(fmax, top) >= 2)[:, None]
    resc_u = resc(s_any, _at(st.anc, top), smax, smin_pop, x_top)

    def resc_open(r: Tensor) -> Tensor:  # [B]: a new ring at the current atom, order r
        cg = f_c - r >= 1
        new_ring = (anc_c & (st.dep >= smin[:, None])) | (is_cur & (cg | gs.any(1))[:, None])
        return resc(s_any | (c_any & cg[:, None]) | new_ring, anc_c,
                    torch.maximum(smax, torch.where(cg, dep_c, -1)), smin, is_cur & (f_c - r >= 2)[:, None])

    def resc_close(order: Tensor) -> tuple[Tensor, Tensor]:  # [B, L, A], [B, L]: closing each label
        cg = (f_c[:, None] - order >= 1)[..., None]
        others = lambda x: x.sum(1, keepdim=True) - x.long() > 0  # noqa: E731
        l0 = st.inring[:, None] | others(s_paths) | (others(c_paths) & cg) | c_paths
        dmax = torch.maximum(smax[:, None, None], torch.where(cg, dep_c[:, None, None], -1))
        l1 = anc_c[:, None] & _between(st.dep[:, None], dmax, smin[:, None, None])
        w = waiting[:, None] & ~l0
        return l0 | l1 | gs2[:, None] | (is_cur[:, None] & (f_c[:, None] - order >= 2)[..., None]), \
            torch.where((w & ~l1).any(-1), 2, w.any(-1).long())

    def atoms_and_rings(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[B, C]`` atom classes, ``[B]`` opening a new ring, ``[B, L]`` closing each label, pending ``p``.
        Tensors are ``[B, K, pi, C or L]``: pi = 0 / 1 without / with a pi bond on the new bond."""
        e = lambda x: x.reshape(B, 1, 1, 1)  # noqa: E731
        k, pi = e(torch.where(p > 0, p, 1)), torch.arange(2, device=dev).view(1, 1, 2, 1)
        v, al = tab.cls_val, tab.cls_arom
        fc4, mc4 = fc.view(B, K, 1, 1), mc.view(B, K, 1, 1)
        arb = e((p == 0) & ac) & al  # an aromatic bond
        ra = [resc_atom(k.view(B), ig) for ig in (False, True)]
        ig = v - k >= 1  # the new atom can still grow (aromatic ones must)
        lost_a = torch.where(ig.view(B, NCLS), lost(ra[1])[:, None], lost(ra[0])[:, None])
        need_a = torch.where(ig, e(ra[1][1]), e(ra[0][1]))
        help2 = gs.any(1) | (cur_is_top & (f_c - k.view(B) >= 1))
        help_ = e((Q > 0) | help2)
        fn = v - k - pi  # an aromatic new atom needs two more bonds, or one and a ring through it
        ok = (alive.view(B, K, 1, 1) & ~torch.where(ig, pic_lost(ra[1], st.ering).view(B, K, 1, 1),
                                                    pic_lost(ra[0], st.ering).view(B, K, 1, 1))
              & (v >= k) & (fc4 >= k + pi) & (~al | (fn >= 2) | ((fn >= 1) & help_))
              & ~(arb & e(_at(st.nar, c) >= 3))
              & ((pi == 0) | (arb & ~mc4 & (fn >= 1) & help_)))  # a pi bond: a ring must pass through it
        mco, fco, tb = mc4 | (pi == 1), fc4 - k - pi, e(cur_is_top)
        ok = ok & (tb | (fco == 0) | ((fco == 1) & ~mco & e(ac) & e(has_unspec_c)))
        need = torch.maximum(torch.maximum(need_a, torch.where(al, torch.where(
            (fn >= 1) & e(nclos.any(1)), 0, torch.where((fn >= 1) & e(cur_opens | help2), 1, 2)), 0)),
            torch.where(e(cur_opens), e(cnt_c) + torch.where((fn >= 1) | e(gs.any(1)), 0, 1), 0))
        kv = lambda x: x.view(B, K, 1, 1)  # noqa: E731
        nsr = torch.where(tb & (fco > 0) & kv(sfree.sum(-1) == 0), e(cnt_c), torch.where(
            ~(tb & (fco > 0)) & kv(one_s), (kv(nsr_all) - fn).clamp(min=0), 0))
        atom = ok & _feasible(e(R0) - 1, e(S1), fn, al & (pi == 0) & e(u_ar_n), kv(Us) + torch.where(tb, fco, 0),
                              kv(Ls) + torch.where(tb, _ceil3(fco), 0), kv(Wn) + (fco > 0).long(),
                              kv(wok_atom) & (fco == 0), kv(P) + (~tb & (fco == 1)).long(), e(dQ), e(dd), e(dso),
                              packed(nclos.view(B, 1, 1, 1, Lu), pend_o.view(B, K, 1, 1, Lu),
                                     (al & (pi == 0))[..., None]), e(n_all), need, e(mult), nsr)
        atom = atom.any(2).any(1) & has_cur[:, None] & ~lost_a
        z = torch.zeros((), dtype=torch.long, device=dev)
        first = (~has_cur & (st.count == 0) & (p == 0))[:, None] & (~al | (v >= 2)) & _feasible(
            R0 - 1, S1, v[None], z.bool(), z, z, z, z.bool(), z, z, z, z, z, ~z.bool(), 2 * al.long(), z)
        atom = atom | first
        # a new ring at the current atom
        r = p.clamp(min=1)[:, None]
        ro = resc_open(r[:, 0])
        grow = (fc - r >= 1)[..., None]  # [B, K, 1]
        need_open = torch.where(at_c[:, None], 0, torch.where(clos_c[:, None], 0, torch.where(
            grow | other_gs[:, None], 1, 2))) * lab_open[:, None]
        need_open = torch.maximum(torch.maximum(need_open.max(-1).values, cnt_c + g1[:, None]), ro[1][:, None])
        need_open = torch.maximum(need_open, 2 * gs_blocked[:, None].long())
        new = alive & ~pic_lost(ro, st.ering) & (fc >= r) & _feasible(
            R0, S1, fc - r, cpi & u_ar_c, Us, Ls, Wn, False, P, dQ + 1, dd, dso + r,
            packed(clos_c[:, None], pend_o, cpi[..., None]), False, need_open, torch.maximum(mult, cnt_c + 1),
            nsr_all - torch.minimum(nsr_all - nsr_c, (fc - r).clamp(min=0)))
        new = new.any(1) & has_cur & st.ring_ok & free_label & ~lost(ro)
        # closing an open ring label
        pj = p[:, None]
        okj = has_cur[:, None] & st.ring_ok[:, None] & clos_c & ((pj == 0) | (q == 0) | (pj == q))
        order = torch.where(pj > 0, pj, q.clamp(min=1))[:, None]  # [B, 1, L]
        arj = ((pj == 0) & (q == 0) & ac[:, None] & aro)[:, None]
        okj = okj & ~(arj[:, 0] & ((_at(st.nar, c)[:, None] >= 3) | (st.nar.gather(1, oj) >= 3)))
        dlt = torch.where((q == 0) & (pj > 1), pj - 1, 0)[:, None]
        rc, need_rc = resc_close(order[:, 0])
        er_j = st.ering[:, None] | diff_c
        lost_j = (waiting[:, None] & ~rc).any(-1)
        pic_j = (st.pic[:, :, None] & ~er_j[:, None] & ~edge(rc)[:, None]).any(-1)
        o4, k4 = (lambda x: x.reshape(B, 1, 1, Lu)), (lambda x: x.reshape(B, K, 1, Lu))  # noqa: E731
        fo4, mo4, oc4, os4 = k4(fo), k4(mo), o4(o_closed), o4(o_stack).long()
        ok = (alive.view(B, K, 1, 1) & o4(okj) & ~k4(pic_j) & (fc4 >= o4(order) + pi)
              & ((pi == 0) | (o4(arj) & ~mc4 & ~mo4 & (fo4 >= 1))))
        fo2, mo2 = fo4 - o4(dlt) - pi, mo4 | (pi == 1)  # an order written at the closure only also binds the opener
        ok = ok & (fo2 >= 0) & (~oc4 | (fo2 == 0) | ((fo2 == 1) & ~mo2 & o4(aro) & o4(other_unspec_o)))
        fcn = fc4 - o4(order) - pi
        grow = (fcn >= 1)[..., None]
        l5 = lambda x: x.reshape(B, 1, 1, *x.shape[1:]) if x.dim() > 1 else x.view(B, 1, 1, 1, 1)  # noqa: E731
        need_after = torch.where(at_c.view(B, 1, 1, 1, Lu), l5(cnt_c[:, 0] + g1 - 1), torch.where(
            l5(clos_after), 0, torch.where(grow | other_gs.view(B, 1, 1, 1, Lu), 1, 2)))
        need_after = torch.maximum((need_after * l5(open_after)).max(-1).values, o4(need_rc))
        need_after = torch.maximum(need_after, 2 * (e(gs_blocked) & (~grow[..., 0] | e(cur_opens))
                                                    & o4(open_after.any(-1))).long())
        mco = mc4 | (pi == 1)
        kv = lambda x: x.view(B, K, 1, 1)  # noqa: E731
        close = ok & _feasible(
            e(R0), e(S1), fcn, kv(cpi) & (pi == 0) & o4(u_ar_after), kv(Us) - os4 * (fo4 - fo2),
            kv(Ls) - os4 * (_ceil3(fo4) - _ceil3(fo2)), kv(Wn) - (fo4 > 0).long() + (fo2 > 0).long(),
            (k4(g_o) >= 1) & (fo2 == 0), kv(P) + (oc4 & (fo2 == 1)).long() - (oc4 & (fo4 == 1)).long(), e(dQ) - 1,
            e(dd), e(dso) - o4(ordj),
            packed(l5(clos_after), pend_o.view(B, K, 1, 1, Lu), (e(ac) & ~mco)[..., None]),
            o4(all_after), need_after, o4(mult_after), k4(nsr_j))
        close = close.any(2)
        return atom, new, close.any(1) & ~lost_j

    if isinstance(bonds, Tensor):
        return torch.cat([x.reshape(B, -1) for x in atoms_and_rings(bonds)], 1).any(1)
    atom, new, close = atoms_and_rings(st.pend)
    if bonds:
        bond = torch.stack([torch.cat([x.reshape(B, -1) for x in atoms_and_rings(torch.full_like(st.pend, kk))], 1)
                            .any(1) for kk in (1, 2, 3)], 1)
    else:
        bond = (torch.where(alive, fc, -1).max(1, keepdim=True).values >= torch.arange(1, 4, device=dev))
    bond = bond & (has_cur & (st.pend == 0))[:, None]  # [B, 3]
    # '(' and ')'
    no_pend = has_cur & (st.pend == 0)
    no = torch.zeros_like(cpi)
    branch = alive & (fc >= 1) & (R0 >= 1) & _feasible(
        R0, S1, fc, no, Us, Ls, Wn, False, P, dQ, dd + 1, dso, 0, dQ == 0,
        torch.where(cur_opens, cnt_c[:, 0] + g1 - 1, Q > 0)[:, None], mult, nsr_all)
    branch = branch.any(1) & no_pend & st.nonempty & (st.depth < MAX_DEPTH)
    fx = _col(free, top)
    gs_p = gs & (torch.arange(MAX_DEPTH, device=dev) < (st.depth - 1)[:, None])
    other_p = (_at(fmax, top) >= 1)[:, None] | (gs_p.sum(1)[:, None] - _on(gs_p).gather(1, oj).long() >= 1)
    need_u = torch.where(rat == top[:, None], (_at(cnt, top) + torch.where(gs_p.any(1), 0, 1))[:, None],
                         torch.where(other_p, 1, 2)) * lab_open
    need_u = torch.maximum(need_u.max(1, keepdim=True).values, 2 * (gs_blocked & (Q > 0))[:, None].long())
    sfree_u = sfree & (ar != top[:, None])[:, None]
    rule_c = (fc == 0) | ((fc == 1) & ~mc & ac[:, None] & _at(has_unspec, c)[:, None])
    unbranch = alive & rule_c & ~pic_lost(resc_u, st.ering) & _feasible(
        R0, S1, fx, no, Us - fx, Ls - _ceil3(fx), Wn - (fx > 0).long() + (fc > 0).long(), False,
        P + (fc == 1).long(), dQ, dd - 1, dso, 0, dQ == 0, torch.maximum(need_u, resc_u[1][:, None]), mult,
        torch.where(sfree_u.sum(-1) == 1, (sfree_u * cnt[:, None]).sum(-1), 0))
    unbranch = unbranch.any(1) & no_pend & st.nonempty & (st.depth > 0) & ~lost(resc_u)
    # the end
    arom_ok = ~(st.arom & placed & ~st.inring).any(1)
    end = alive & (fc == 0) & (Wn == 0) & ~(st.pic & ~st.ering[:, None]).any(-1)
    end = end.any(1) & no_pend & (st.depth == 0) & (Q == 0) & arom_ok
    # tokens
    kind = tab.kind
    lab = tab.label[None].expand(B, -1)
    is_open = (st.ring_atom >= 0).gather(1, lab)  # [B, V]
    close = torch.cat([close, close.new_zeros(B, LABELS - Lu)], 1)
    out = torch.zeros(B, kind.numel(), dtype=torch.bool, device=dev)
    out |= (kind == ATOM) & atom.gather(1, tab.cls[None].expand(B, -1))
    out |= (kind == BOND) & bond.gather(1, (tab.order - 1).clamp(min=0)[None].expand(B, -1))
    out |= (kind == RING) & torch.where(is_open, close.gather(1, lab), new[:, None])
    out |= (kind == BRANCH) & branch[:, None]
    out |= (kind == CLOSE) & unbranch[:, None]
    out |= (kind == END) & end[:, None]
    return out

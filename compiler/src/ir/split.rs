//! `split_heavy`: hoists every reduction and normaliser that sits inside an
//! elementwise body into an op of its own, so each op has at most one heavy
//! computation at its root. `z = conv(g, h)[..] + g * bias` becomes
//! `z.0 = conv(g, h)[..]` and `z = z.0 + g * bias`; the optimiser can then
//! pick an algorithm for the convolution and fuse the elementwise rest into
//! its epilogue. Meaning is unchanged: the hoisted op computes exactly the
//! subexpression, read back at the same indices (tests check this by
//! interpretation).
//!
//! Only top-level heavy subexpressions are hoisted (not ones nested inside
//! another reduction, whose indices would also have to become axes), and
//! only from ops that are not scans.

use super::*;

/// Returns the module with heavy subexpressions hoisted into their own ops.
pub fn split_heavy(m: &Module) -> Module {
    let mut out = Module {
        name: m.name.clone(),
        sizes: m.sizes.clone(),
        values: Vec::new(),
        exprs: m.exprs.clone(),
        ops: Vec::new(),
        inputs: Vec::new(),
        output: ValueId(0),
    };
    // Old value id -> new value id.
    let mut remap: Vec<Option<ValueId>> = vec![None; m.values.len()];
    for (k, v) in m.values.iter().enumerate() {
        match &v.def {
            ValueDef::Input | ValueDef::Param(_) => {
                remap[k] = Some(ValueId(out.values.len() as u32));
                out.values.push(v.clone());
            }
            ValueDef::Op(_) => {}
        }
    }
    out.inputs = m
        .inputs
        .iter()
        .map(|i| remap[i.0 as usize].unwrap_or(*i))
        .collect();
    for op in &m.ops {
        let mut op = op.clone();
        let name = m.value(op.result).name.clone();
        if op.recurrence.is_some() {
            // A scan reads itself: its new id must be known before remapping.
            remap[op.result.0 as usize] = Some(ValueId(out.values.len() as u32));
        }
        remap_reads(&mut out, op.body, &remap);
        if op.recurrence.is_none() && !is_heavy(&out, op.body) {
            let mut found = Vec::new();
            heavy_roots(&out, op.body, &mut found);
            // Identical subexpressions (an `fn` argument used several
            // times) are hoisted once and read wherever they occur.
            let mut seen: Vec<(String, ExprId)> = Vec::new();
            let mut n = 0;
            for h in found {
                let key = alpha_key(&super::text::expr(&out, Some(&op), h), op.rank);
                if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                    // `first` is now a read of the hoisted value: read it
                    // here too, with subscripts of its own.
                    let first = out.expr(*first).clone();
                    if let Node::Read(v, subs) = &first.node {
                        let subs: Vec<ExprId> = subs
                            .iter()
                            .map(|s| copy_renumbered(&mut out, *s, &Default::default()))
                            .collect();
                        out.exprs[h.0 as usize] = ExprNode {
                            node: Node::Read(*v, subs),
                            ..first
                        };
                        continue;
                    }
                }
                hoist(&mut out, &mut op, h, &format!("{name}.{n}"));
                n += 1;
                seen.push((key, h));
            }
            compact_slots(&mut out, &mut op);
        }
        let new_id = ValueId(out.values.len() as u32);
        remap[op.result.0 as usize] = Some(new_id);
        let old = &m.values[op.result.0 as usize];
        out.values.push(Value {
            name: old.name.clone(),
            shape: old.shape.clone(),
            def: ValueDef::Op(OpId(out.ops.len() as u32)),
            span: old.span,
        });
        op.result = new_id;
        op.kind = classify(&out, &op);
        out.ops.push(op);
    }
    out.output = remap[m.output.0 as usize].unwrap_or(m.output);
    // Kinds may change once reads point at the right values.
    for k in 0..out.ops.len() {
        let kind = classify(&out, &out.ops[k]);
        out.ops[k].kind = kind;
    }
    out
}

fn remap_reads(m: &mut Module, e: ExprId, remap: &[Option<ValueId>]) {
    if let Node::Read(v, _) = &mut m.exprs[e.0 as usize].node {
        if let Some(Some(n)) = remap.get(v.0 as usize) {
            *v = *n;
        }
    }
    for c in m.children(e) {
        remap_reads(m, c, remap);
    }
}

fn is_heavy(m: &Module, e: ExprId) -> bool {
    matches!(m.expr(e).node, Node::Reduce { .. } | Node::Normalize { .. })
}

/// Heavy subexpressions not nested in another binder.
fn heavy_roots(m: &Module, e: ExprId, out: &mut Vec<ExprId>) {
    if is_heavy(m, e) {
        out.push(e);
        return;
    }
    for c in m.children(e) {
        heavy_roots(m, c, out);
    }
}

fn slots_used(m: &Module, e: ExprId, out: &mut Vec<Slot>) {
    if let Node::Index(s) | Node::Normalize { slot: s, .. } = &m.expr(e).node {
        if !out.contains(s) {
            out.push(*s)
        }
    }
    for c in m.children(e) {
        slots_used(m, c, out);
    }
}

/// Moves subexpression `h` of `op` into a new op, replacing it with a read.
fn hoist(m: &mut Module, op: &mut Op, h: ExprId, name: &str) {
    let mut used = Vec::new();
    slots_used(m, h, &mut used);
    // Result axes: the op's result slots the subexpression uses, in order.
    let free: Vec<Slot> = (0..op.rank as Slot).filter(|s| used.contains(s)).collect();
    let inner: Vec<Slot> = used
        .iter()
        .copied()
        .filter(|s| *s as usize >= op.rank)
        .collect();
    let mut map = std::collections::HashMap::new();
    let mut slots = Vec::new();
    for s in free.iter().chain(inner.iter()) {
        map.insert(*s, slots.len() as Slot);
        slots.push(op.slots[*s as usize].clone());
    }
    // Copy the subtree with renumbered slots.
    let body = copy_renumbered(m, h, &map);
    let new_value = ValueId(m.values.len() as u32);
    let new_op = Op {
        result: new_value,
        slots,
        rank: free.len(),
        body,
        recurrence: None,
        kind: OpKind::Map,
        span: op.span,
    };
    m.values.push(Value {
        name: name.to_string(),
        shape: free
            .iter()
            .map(|s| op.slots[*s as usize].extent.clone())
            .collect(),
        def: ValueDef::Op(OpId(m.ops.len() as u32)),
        span: op.span,
    });
    let mut new_op = new_op;
    new_op.kind = classify(m, &new_op);
    m.ops.push(new_op);
    // Replace `h` in place with a read of the new value.
    let span = m.expr(h).span;
    let subs: Vec<ExprId> = free
        .iter()
        .map(|s| m.add_expr(Node::Index(*s), Ty::Int, span))
        .collect();
    let ty = m.expr(h).ty;
    m.exprs[h.0 as usize] = ExprNode {
        node: Node::Read(new_value, subs),
        ty,
        span,
    };
}

/// Drops the op's inner slots that no binder uses any more (they moved to
/// hoisted ops) and renumbers the rest after the result slots.
fn compact_slots(m: &mut Module, op: &mut Op) {
    let mut bound = Vec::new();
    collect_bound(m, op.body, &mut bound);
    let mut map = std::collections::HashMap::new();
    let mut slots: Vec<IndexVar> = op.slots[..op.rank].to_vec();
    for s in bound {
        if s as usize >= op.rank && !map.contains_key(&s) {
            map.insert(s, slots.len() as Slot);
            slots.push(op.slots[s as usize].clone());
        }
    }
    renumber(m, op.body, &map);
    op.slots = slots;
}

fn collect_bound(m: &Module, e: ExprId, out: &mut Vec<Slot>) {
    if let Node::Reduce { slots, .. } = &m.expr(e).node {
        out.extend(slots.iter().copied());
    }
    for c in m.children(e) {
        collect_bound(m, c, out);
    }
}

fn renumber(m: &mut Module, e: ExprId, map: &std::collections::HashMap<Slot, Slot>) {
    let r = |s: &mut Slot| {
        if let Some(n) = map.get(s) {
            *s = *n;
        }
    };
    match &mut m.exprs[e.0 as usize].node {
        Node::Index(s) => r(s),
        Node::Reduce { slots, .. } => slots.iter_mut().for_each(r),
        Node::Normalize { slot, .. } => r(slot),
        _ => {}
    }
    for c in m.children(e) {
        renumber(m, c, map);
    }
}

fn copy_renumbered(
    m: &mut Module,
    e: ExprId,
    map: &std::collections::HashMap<Slot, Slot>,
) -> ExprId {
    m.copy_expr(e, &|s| *map.get(&s).unwrap_or(&s), &mut |_, _| None)
}

/// A subexpression's text with its bound indices (slots at or after `rank`)
/// renumbered by first appearance, so copies that differ only in the slots
/// their reductions bind compare equal.
pub fn alpha_key(text: &str, rank: usize) -> String {
    let mut out = String::new();
    let mut names: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        let (head, tail) = rest.split_at(at);
        // Drop the index's name (letters before `@`) from the key.
        let name_start = head.rfind([' ', '(']).map(|p| p + 1).unwrap_or(0);
        out.push_str(&head[..name_start]);
        let digits: String = tail[1..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let slot: usize = digits.parse().unwrap_or(0);
        if slot < rank {
            out.push_str(&format!("@{slot}"));
        } else {
            let k = match names.iter().position(|n| *n == digits) {
                Some(k) => k,
                None => {
                    names.push(digits.clone());
                    names.len() - 1
                }
            };
            out.push_str(&format!("@bound{k}"));
        }
        rest = &tail[1 + digits.len()..];
    }
    out.push_str(rest);
    out
}

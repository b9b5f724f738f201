//! DAG-aware extraction: picks one e-node per class so that the whole program, with every
//! shared class paid once, is cheap under the cost model.
//!
//! Greedy to a fixpoint, after the "faster greedy DAG" extractor of extraction-gym: each
//! class keeps the set of classes its best choice depends on (a bitset); a candidate's cost
//! is the sum of the own costs over the union of its children's sets plus itself, so sharing
//! is counted once. A candidate whose children already depend on its own class is skipped,
//! which keeps the choice acyclic.

use super::cost::{node_cost, Cost};
use super::lang::{EOp, ENode, EG};
use egg::Id;
use fixedbitset::FixedBitSet;
use std::collections::{HashMap, HashSet};

/// The chosen e-node of each class reachable from the roots.
pub struct Extraction {
    pub choice: HashMap<Id, ENode>,
    pub cost: Cost,
}

/// Passes over all classes before giving up on reaching a fixpoint; each pass can only lower
/// costs, and real programs settle in a handful.
const MAX_PASSES: usize = 64;

pub fn extract(eg: &EG, roots: &[Id]) -> Option<Extraction> {
    let classes: Vec<Id> = {
        let mut v: Vec<Id> = eg.classes().map(|c| c.id).collect();
        v.sort();
        v
    };
    let index: HashMap<Id, usize> = classes.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    let n = classes.len();
    let mut own: Vec<Option<Cost>> = vec![None; n];
    let mut deps: Vec<Option<FixedBitSet>> = vec![None; n];
    let mut best: Vec<Option<ENode>> = vec![None; n];
    let mut totals: Vec<Option<Cost>> = vec![None; n];
    let node_costs: Vec<Vec<Cost>> = classes.iter().map(|&c| eg[c].nodes.iter().map(|nd| node_cost(eg, nd, c)).collect()).collect();
    // An epilogue is only tried whole, after the greedy pass (see
    // `improve_with_multi_outputs`): judged class by class, reading a map through its op's
    // tuple looks one launch cheaper than it is (the op's own launch is paid by the tuple, not
    // by its class), which pulls unrelated choices off their best.
    let epilogue = |node: &ENode| {
        matches!(eg.analysis.op(node.op), EOp::Proj(_)) && eg[node.children[0]].nodes.iter().any(|t| matches!(eg.analysis.op(t.op), EOp::WithEpilogue { .. }))
    };

    for _ in 0..MAX_PASSES {
        let mut changed = false;
        for (ci, &c) in classes.iter().enumerate() {
            for (ni, node) in eg[c].nodes.iter().enumerate() {
                if epilogue(node) {
                    continue;
                }
                let mut set = FixedBitSet::with_capacity(n);
                let mut ok = true;
                for &ch in &node.children {
                    match &deps[index[&eg.find(ch)]] {
                        Some(d) => set.union_with(d),
                        None => {
                            ok = false;
                            break;
                        }
                    }
                }
                if !ok || set.contains(ci) {
                    continue;
                }
                let mut total = node_costs[ci][ni];
                for d in set.ones() {
                    total = total + own[d].expect("invariant: a class in a dependency set has a choice");
                }
                if totals[ci].is_none_or(|t| total < t) {
                    set.insert(ci);
                    totals[ci] = Some(total);
                    own[ci] = Some(node_costs[ci][ni]);
                    deps[ci] = Some(set);
                    best[ci] = Some(node.clone());
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }

    let mut best: HashMap<Id, ENode> = classes.iter().zip(best).filter_map(|(&c, b)| b.map(|b| (c, b))).collect();
    improve_with_multi_outputs(eg, roots, &mut best);
    let cost = dag_cost(eg, roots, &best)?;
    let mut choice = HashMap::new();
    let mut stack: Vec<Id> = roots.iter().map(|&r| eg.find(r)).collect();
    while let Some(c) = stack.pop() {
        if choice.contains_key(&c) {
            continue;
        }
        let node = best.get(&c)?.clone();
        stack.extend(node.children.iter().map(|&ch| eg.find(ch)));
        choice.insert(c, node);
    }
    Some(Extraction { choice, cost })
}

/// The cost of the program the choice reaches from the roots, each class paid once; `None`
/// when the choice is cyclic or incomplete.
fn dag_cost(eg: &EG, roots: &[Id], best: &HashMap<Id, ENode>) -> Option<Cost> {
    fn visit(eg: &EG, c: Id, best: &HashMap<Id, ENode>, state: &mut HashMap<Id, bool>, total: &mut Cost) -> Option<()> {
        let c = eg.find(c);
        match state.get(&c) {
            Some(true) => return Some(()),
            Some(false) => return None,
            None => {}
        }
        state.insert(c, false);
        let node = best.get(&c)?;
        for &ch in &node.children {
            visit(eg, ch, best, state, total)?;
        }
        *total = *total + node_cost(eg, node, c);
        state.insert(c, true);
        Some(())
    }
    let mut state = HashMap::new();
    let mut total = Cost::default();
    for &r in roots {
        visit(eg, r, best, &mut state, &mut total)?;
    }
    Some(total)
}

/// The greedy pass judges each class alone, so it cannot see that several outputs computed
/// by one multi-output kernel (several maps, a sum and its map, an op and its epilogue,
/// several sums over one space) share
/// its launch. For each multi-output kernel, try reading every class it computes through it,
/// and keep that when the whole program gets cheaper.
fn improve_with_multi_outputs(eg: &EG, roots: &[Id], best: &mut HashMap<Id, ENode>) {
    let Some(mut current) = dag_cost(eg, roots, best) else { return };
    let mut multis: Vec<(Id, ENode)> = Vec::new();
    for class in eg.classes() {
        for node in &class.nodes {
            if super::lang::is_tuple(eg.analysis.op(node.op)) {
                multis.push((class.id, node.clone()));
            }
        }
    }
    multis.sort();
    for (mclass, mnode) in multis {
        let mut trial = best.clone();
        trial.insert(mclass, mnode.clone());
        let mut outputs = Vec::new();
        for class in eg.classes() {
            if let Some(proj) = class.nodes.iter().find(|n| matches!(eg.analysis.op(n.op), EOp::Proj(_)) && eg.find(n.children[0]) == mclass) {
                trial.insert(class.id, proj.clone());
                outputs.push(class.id);
            }
        }
        if let Some(cost) = dag_cost(eg, roots, &trial) {
            if cost < current {
                current = cost;
                *best = trial;
                // (A sum's epilogue is a step output nothing else reads: no class re-chooses.)
                if matches!(eg.analysis.op(mnode.op), EOp::WithEpilogue { op, .. } if !matches!(op, crate::ir::Op::FusedReduce { .. })) {
                    reread_outputs(eg, roots, best, &mut current, &outputs);
                }
            }
        }
    }
}

/// Once a kernel computes a map as its op's epilogue, a class that read the op's output to
/// compute the same map again (a sum of the masked gradient, say) may read the map instead;
/// tries every alternative of each class reading the kernel's outputs, keeping what makes the
/// program cheaper.
fn reread_outputs(eg: &EG, roots: &[Id], best: &mut HashMap<Id, ENode>, current: &mut Cost, outputs: &[Id]) {
    // Only classes the program reaches can change its cost.
    let mut reached: HashSet<Id> = HashSet::new();
    let mut stack: Vec<Id> = roots.iter().map(|&r| eg.find(r)).collect();
    while let Some(c) = stack.pop() {
        if reached.insert(c) {
            if let Some(n) = best.get(&c) {
                stack.extend(n.children.iter().map(|&ch| eg.find(ch)));
            }
        }
    }
    let mut readers: Vec<Id> = best
        .iter()
        .filter(|(c, n)| {
            reached.contains(c) && !outputs.contains(c) && !matches!(eg.analysis.op(n.op), EOp::Proj(_)) && n.children.iter().any(|ch| outputs.contains(&eg.find(*ch)))
        })
        .map(|(&c, _)| c)
        .collect();
    readers.sort();
    for r in readers {
        for node in &eg[r].nodes {
            if matches!(eg.analysis.op(node.op), EOp::Proj(_)) || best.get(&r) == Some(node) {
                continue;
            }
            // Tried in place, put back unless the program gets cheaper.
            let old = best.insert(r, node.clone());
            match dag_cost(eg, roots, best) {
                Some(cost) if cost < *current => *current = cost,
                _ => {
                    if let Some(old) = old {
                        best.insert(r, old);
                    }
                }
            }
        }
    }
}

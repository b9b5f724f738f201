//! Rewrite rules, by topic. Each rule is a named search over the e-graph that proposes
//! equalities; see `README.md` for the house rules.

mod algebra;
mod fusion;
mod optimizer;

pub(crate) use fusion::{sibling_outputs, sibling_sums, sum_with_map, with_epilogue};
pub use fusion::{MAX_PROGRAM_INSTRS, MAX_PROGRAM_OPERANDS};

use super::lang::{EOp, EG};
use egg::Id;

/// What a rule proposes for an e-class.
pub(crate) enum Change {
    /// The class equals this existing class.
    Union(Id),
    /// The class also contains this new e-node.
    Add(EOp, Vec<Id>),
    /// The class also contains a reshape (to the class's shape) of this new e-node, which has
    /// the same elements in another shape.
    AddReshaped(EOp, Vec<Id>, crate::ir::Shape),
    /// The class also contains `op` over the classes of the new e-nodes `parts` (each a class
    /// of its own, serving this one), then over `rest`.
    AddOver { parts: Vec<(EOp, Vec<Id>)>, op: EOp, rest: Vec<Id> },
}

/// A named rule: a one-line algebra comment and the search that applies it.
pub(crate) struct Rule {
    pub name: &'static str,
    pub algebra: &'static str,
    pub find: fn(&EG) -> Vec<(Id, Change)>,
}

/// Every rule, algebra first, then the optimizer's, then fusion.
pub(crate) fn all() -> Vec<Rule> {
    let mut rules = algebra::rules();
    rules.extend(optimizer::rules());
    rules.extend(fusion::rules());
    rules
}

/// The program-carrying e-nodes of a class (fused maps and reductions), with their index.
pub(crate) fn single_output_program(op: &EOp) -> Option<&crate::ir::Program> {
    match op {
        EOp::Ir(crate::ir::Op::Fused { program, .. }) if program.outputs.len() == 1 => Some(program),
        _ => None,
    }
}

//! The step builder: a model's loss graph and an optimizer spec become one IR program for a
//! whole training step, with parameters and optimizer state in one arena.

mod build;
mod ew;
mod naive;
mod optimizer;
mod spec;

pub use build::{build_eval_step, build_step};
pub use naive::build_naive_step;
pub use spec::{BaseOptimizer, OptimizerSpec, Sam, SamNorm};

use crate::ir::{Graph, NodeId, Shape};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A model's forward pass and loss, not yet differentiated, as the frontend traced it.
#[derive(Clone, Debug)]
pub struct LossModel {
    pub graph: Graph,
    pub loss: NodeId,
    pub accuracy: NodeId,
    /// The `Param` leaves, in arena order.
    pub params: Vec<NodeId>,
    pub input: NodeId,
    pub labels: NodeId,
}

/// Where in the step a node belongs; every kernel of a schedule carries its phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// The forward pass at `w`.
    Forward,
    /// The backward pass at `w`.
    Backward,
    /// SAM's ascent: gradient norm and perturbation.
    Ascent,
    /// The forward pass at the perturbed point `w + e`.
    ForwardAdv,
    /// The backward pass at `w + e`.
    BackwardAdv,
    /// The base optimizer's update.
    Descent,
    /// Values only the caller reads (m-sharpness: the micro-batches' mean loss, accuracy,
    /// gradient norm and running statistics).
    Metrics,
}

impl Phase {
    /// Phases that belong to the optimizer rather than to a forward or backward pass.
    pub fn is_optimizer(self) -> bool {
        matches!(self, Phase::Ascent | Phase::Descent)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Ascent => "ascent",
            Phase::ForwardAdv => "forward@adv",
            Phase::BackwardAdv => "backward@adv",
            Phase::Descent => "descent",
            Phase::Metrics => "metrics",
        })
    }
}

/// One parameter's place in the arena.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArenaSlot {
    pub name: String,
    pub offset: usize,
    pub shape: Shape,
}

/// The parameter arena's layout: every parameter (and every arena-shaped optimizer state)
/// is a contiguous range of one 1-D buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arena {
    pub slots: Vec<ArenaSlot>,
    pub len: usize,
}

impl Arena {
    pub fn new<'a>(params: impl IntoIterator<Item = (&'a str, &'a Shape)>) -> Self {
        let mut arena = Arena::default();
        for (name, shape) in params {
            arena.slots.push(ArenaSlot { name: name.to_string(), offset: arena.len, shape: shape.clone() });
            arena.len += shape.numel();
        }
        arena
    }
}

/// A whole training step as one IR program.
///
/// Leaves: inputs `x`, `labels`; scalars `lr`, `step` and (SAM) `rho`; the parameter arena
/// `params`; optimizer states (`momentum`, `exp_avg`, `exp_avg_sq`) and BatchNorm running
/// statistics. Outputs: `loss`, `accuracy`, under SAM `grad_sq_norm` (the squared gradient
/// norm at `w` its ascent computes; a plain step does not spend a reduction over the arena on
/// it), and an update for every parameter and state leaf.
#[derive(Clone, Debug)]
pub struct Step {
    pub graph: Graph,
    pub arena: Arena,
    pub phases: BTreeMap<NodeId, Phase>,
    pub spec: OptimizerSpec,
}

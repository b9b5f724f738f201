//! cubecl lowering of plateau's scheduled kernels.

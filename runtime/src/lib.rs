//! plateau's executors. For now, the reference interpreter: the CPU oracle every device
//! backend is checked against.

pub mod backend;
pub mod data;
pub mod device;
mod error;
pub mod reference;

pub use error::RuntimeError;
pub use backend::{device_name, Backend, Runner};
pub use device::DeviceStep;
pub use reference::{Bindings, Tensor};

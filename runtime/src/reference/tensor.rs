//! Host tensors of the reference interpreter: a type and row-major `f64` data, rounded to
//! the type's precision after every op (so an `f32` graph computes in `f32`).

use crate::error::RuntimeError;
use plateau_compiler::{DType, Shape, TensorType};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub ty: TensorType,
    pub data: Vec<f64>,
}

impl Tensor {
    /// A tensor of `dtype` and `shape` holding `data` (rounded to `dtype`).
    pub fn new(dtype: DType, shape: impl Into<Shape>, data: Vec<f64>) -> Result<Self, RuntimeError> {
        let ty = TensorType { dtype, shape: shape.into() };
        if data.len() != ty.shape.numel() {
            return Err(RuntimeError::DataLength { expected: ty.shape.numel(), got: data.len(), ty });
        }
        let data = data.into_iter().map(|v| round(dtype, v)).collect();
        Ok(Tensor { ty, data })
    }

    pub fn from_f32(shape: impl Into<Shape>, data: &[f32]) -> Result<Self, RuntimeError> {
        Self::new(DType::F32, shape, data.iter().map(|&v| v as f64).collect())
    }

    pub fn scalar(dtype: DType, value: f64) -> Self {
        Tensor { ty: TensorType { dtype, shape: Shape::scalar() }, data: vec![round(dtype, value)] }
    }

    pub fn zeros(dtype: DType, shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        Tensor { data: vec![0.0; shape.numel()], ty: TensorType { dtype, shape } }
    }

    /// Labels as an `i32` vector.
    pub fn labels(labels: &[i32]) -> Self {
        Tensor {
            ty: TensorType { dtype: DType::I32, shape: Shape(vec![labels.len()]) },
            data: labels.iter().map(|&l| l as f64).collect(),
        }
    }

    pub fn shape(&self) -> &Shape {
        &self.ty.shape
    }

    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> f64 {
        self.data[0]
    }

    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }
}

/// Rounds `v` to what `dtype` can hold.
pub fn round(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F64 => v,
        DType::I32 => v.trunc(),
        DType::Bool => {
            if v != 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

//! Lists a module's parameters (path, kind, shape) without materialising lazily initialised
//! weights, so the full SD1.5 architecture can be checked against its checkpoint keys in
//! milliseconds and without allocating 4 GB.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

/// One parameter as a checkpoint would store it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// burn path, enum variants skipped (`down_blocks.0.resnets.0.norm1.gamma`).
    pub path: String,
    /// The module type holding it (`Linear`, `GroupNorm`, ...).
    pub module: String,
    /// Shape in burn's layout (Linear weights are `[in, out]`).
    pub shape: Vec<usize>,
}

impl ParamInfo {
    /// The PyTorch/diffusers name and shape: norms call gamma/beta weight/bias, Linear weights
    /// are `[out, in]`.
    pub fn torch_layout(&self) -> (String, Vec<usize>) {
        let mut shape = self.shape.clone();
        let norm = self.module.ends_with("Norm");
        let path = match self.path.rsplit_once('.') {
            Some((head, "gamma")) if norm => format!("{head}.weight"),
            Some((head, "beta")) if norm => format!("{head}.bias"),
            _ => self.path.clone(),
        };
        if self.module == "Linear" && shape.len() == 2 {
            shape.reverse();
        }
        (path, shape)
    }
}

#[derive(Default)]
struct Lister {
    path: Vec<String>,
    modules: Vec<String>,
    out: Vec<ParamInfo>,
}

impl Lister {
    fn push<const D: usize, K: burn::tensor::kind::Basic>(&mut self, param: &Param<Tensor<D, K>>)
    where
        Tensor<D, K>: burn::module::Parameter,
    {
        self.out.push(ParamInfo {
            path: self.path.join("."),
            module: self.modules.last().cloned().unwrap_or_default(),
            shape: param.lazy_shape().to_vec(),
        });
    }
}

impl ModuleVisitor for Lister {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.path.push(name.to_string());
        }
        if let Some(kind) = container_type.strip_prefix("Struct:") {
            self.modules.push(kind.to_string());
        } else {
            self.modules
                .push(self.modules.last().cloned().unwrap_or_default());
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.path.pop();
        }
        self.modules.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.push(param);
    }
}

/// Every float parameter of `module`, in visiting order.
pub fn parameters<M: Module>(module: &M) -> Vec<ParamInfo> {
    let mut lister = Lister::default();
    module.visit(&mut lister);
    lister.out
}

/// Total number of float parameters.
pub fn parameter_count<M: Module>(module: &M) -> usize {
    parameters(module)
        .iter()
        .map(|p| p.shape.iter().product::<usize>())
        .sum()
}

//! What `--device auto` chooses among the graphics adapters wgpu reports, as a pure function of
//! their descriptions, so the rule is tested without a GPU.
//!
//! The rule: the best real GPU (discrete, then integrated, then virtual, then any other
//! hardware), in the order the graphics APIs are preferred (Vulkan first on Linux). A software
//! rasteriser (Mesa lavapipe / llvmpipe / softpipe, SwiftShader, Microsoft's WARP) is never
//! chosen by `auto`: it is a CPU running shaders, far slower than invert's own CPU kernels.
//! `--device wgpu` accepts one when nothing better exists, for testing the GPU code path.

use std::fmt;

/// wgpu's `DeviceType`, without the dependency (this module is built without the `wgpu`
/// feature too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterKind {
    DiscreteGpu,
    IntegratedGpu,
    VirtualGpu,
    /// wgpu's `DeviceType::Cpu`: a software rasteriser.
    Cpu,
    Other,
}

impl AdapterKind {
    pub fn describe(self) -> &'static str {
        match self {
            AdapterKind::DiscreteGpu => "discrete GPU",
            AdapterKind::IntegratedGpu => "integrated GPU",
            AdapterKind::VirtualGpu => "virtual GPU",
            AdapterKind::Cpu => "software (CPU)",
            AdapterKind::Other => "other",
        }
    }
}

/// One adapter as wgpu reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    pub name: String,
    pub kind: AdapterKind,
    /// The graphics API it was found on: "Vulkan", "Metal", "Dx12" or "Gl".
    pub api: String,
    /// Driver name and version, where the API reports them (may be empty).
    pub driver: String,
}

/// Names of software rasterisers whose drivers do not all report `DeviceType::Cpu` (wgpu's GL
/// backend, for one, guesses the type from the renderer string).
/// WARP calls itself "Microsoft Basic Render Driver".
const SOFTWARE_NAMES: [&str; 5] = [
    "llvmpipe",
    "lavapipe",
    "softpipe",
    "swiftshader",
    "microsoft basic render",
];

impl AdapterInfo {
    pub fn new(name: &str, kind: AdapterKind, api: &str) -> Self {
        AdapterInfo {
            name: name.into(),
            kind,
            api: api.into(),
            driver: String::new(),
        }
    }

    /// A CPU pretending to be a GPU.
    pub fn is_software(&self) -> bool {
        let name = self.name.to_lowercase();
        self.kind == AdapterKind::Cpu || SOFTWARE_NAMES.iter().any(|s| name.contains(s))
    }

    /// Lower is better; `None` for a software adapter.
    fn rank(&self) -> Option<u8> {
        if self.is_software() {
            return None;
        }
        Some(match self.kind {
            AdapterKind::DiscreteGpu => 0,
            AdapterKind::IntegratedGpu => 1,
            AdapterKind::VirtualGpu => 2,
            AdapterKind::Other => 3,
            AdapterKind::Cpu => return None,
        })
    }
}

impl fmt::Display for AdapterInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {}", self.name, self.kind.describe(), self.api)?;
        if !self.driver.is_empty() {
            write!(f, ", {}", self.driver)?;
        }
        write!(f, ")")
    }
}

/// The index in `adapters` of the one to use: the best-ranked real GPU, earlier entries first
/// on a tie (the list is in API preference order); with `allow_software`, the first software
/// adapter when there is no real GPU. `None` when nothing qualifies.
pub fn pick(adapters: &[AdapterInfo], allow_software: bool) -> Option<usize> {
    let best = adapters
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.rank().map(|r| (r, i)))
        .min()
        .map(|(_, i)| i);
    best.or_else(|| {
        allow_software
            .then(|| adapters.iter().position(AdapterInfo::is_software))
            .flatten()
    })
}

/// The adapter's index among those of its own kind on its own API, in listing order: how wgpu
/// (cubecl) addresses it (`DiscreteGpu(n)` is the n-th discrete GPU of that API).
pub fn index_within_kind(adapters: &[AdapterInfo], i: usize) -> usize {
    let target = &adapters[i];
    adapters[..i]
        .iter()
        .filter(|a| a.kind == target.kind && a.api == target.api)
        .count()
}

#[cfg(test)]
mod tests {
    use super::AdapterKind::*;
    use super::*;

    fn list(items: &[(&str, AdapterKind, &str)]) -> Vec<AdapterInfo> {
        items
            .iter()
            .map(|(n, k, api)| AdapterInfo::new(n, *k, api))
            .collect()
    }

    #[test]
    fn a_discrete_gpu_wins() {
        let a = list(&[
            ("llvmpipe (LLVM 15.0.6, 256 bits)", Cpu, "Vulkan"),
            ("Intel(R) UHD Graphics 630", IntegratedGpu, "Vulkan"),
            ("NVIDIA H100 80GB HBM3", DiscreteGpu, "Vulkan"),
        ]);
        assert_eq!(pick(&a, false), Some(2));
        assert_eq!(pick(&a, true), Some(2));
    }

    #[test]
    fn an_integrated_gpu_beats_the_cpu() {
        let a = list(&[
            ("AMD Radeon Graphics (RADV RENOIR)", IntegratedGpu, "Vulkan"),
            ("llvmpipe (LLVM 15.0.6, 256 bits)", Cpu, "Vulkan"),
        ]);
        assert_eq!(pick(&a, false), Some(0));
    }

    #[test]
    fn software_adapters_only_when_asked() {
        let a = list(&[
            ("llvmpipe (LLVM 15.0.6, 256 bits)", Cpu, "Vulkan"),
            ("llvmpipe (LLVM 15.0.6, 256 bits)", Cpu, "Gl"),
        ]);
        assert_eq!(pick(&a, false), None);
        assert_eq!(pick(&a, true), Some(0));
        assert_eq!(pick(&[], true), None);
    }

    #[test]
    fn software_is_recognised_by_name_whatever_the_type() {
        // wgpu's GL backend guesses the type from the renderer string; a name is the evidence.
        for name in [
            "llvmpipe (LLVM 15.0.6, 256 bits)",
            "Mesa lavapipe",
            "SwiftShader Device (Subzero)",
            "Microsoft Basic Render Driver",
            "softpipe",
        ] {
            assert!(AdapterInfo::new(name, Other, "Gl").is_software(), "{name}");
        }
        for name in [
            "NVIDIA GeForce RTX 4090",
            "Apple M2",
            "AMD Radeon RX 7900 XTX",
        ] {
            assert!(
                !AdapterInfo::new(name, DiscreteGpu, "Vulkan").is_software(),
                "{name}"
            );
        }
        let a = list(&[("llvmpipe", Other, "Gl"), ("Some Accelerator", Other, "Gl")]);
        assert_eq!(pick(&a, false), Some(1));
    }

    #[test]
    fn ties_keep_the_api_order() {
        // The same card on Vulkan and on GL: the first listed (Vulkan, the preferred API).
        let a = list(&[
            ("NVIDIA GeForce RTX 3060", DiscreteGpu, "Vulkan"),
            ("NVIDIA GeForce RTX 3060/PCIe/SSE2", DiscreteGpu, "Gl"),
        ]);
        assert_eq!(pick(&a, false), Some(0));
        let b = list(&[
            ("Virtual GPU", VirtualGpu, "Vulkan"),
            ("Other thing", Other, "Vulkan"),
        ]);
        assert_eq!(pick(&b, false), Some(0));
    }

    #[test]
    fn indices_count_per_kind_and_api() {
        let a = list(&[
            ("A", DiscreteGpu, "Vulkan"),
            ("B", IntegratedGpu, "Vulkan"),
            ("C", DiscreteGpu, "Vulkan"),
            ("C", DiscreteGpu, "Gl"),
        ]);
        assert_eq!(index_within_kind(&a, 0), 0);
        assert_eq!(index_within_kind(&a, 1), 0);
        assert_eq!(index_within_kind(&a, 2), 1);
        assert_eq!(index_within_kind(&a, 3), 0);
    }

    #[test]
    fn display_names_the_adapter() {
        let mut a = AdapterInfo::new("NVIDIA H100 80GB HBM3", DiscreteGpu, "Vulkan");
        a.driver = "NVIDIA 580.159.04".into();
        assert_eq!(
            a.to_string(),
            "NVIDIA H100 80GB HBM3 (discrete GPU, Vulkan, NVIDIA 580.159.04)"
        );
    }
}

//! Listing the adapters wgpu sees and opening the chosen one (built with the `wgpu` feature).

use std::future::Future;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use burn::prelude::Device;
use burn::tensor::DeviceKind;
use burn::tensor::wgpu::{WgpuBackend, wgpu};

use super::DeviceError;
use super::adapter::{AdapterInfo, AdapterKind, index_within_kind};

/// The Vulkan loader crashes when instances come and go on several threads at once (cubecl
/// serialises its own for the same reason); tests probe from parallel threads.
static PROBE: Mutex<()> = Mutex::new(());

/// Devices already opened, by adapter: burn refuses to initialise one runtime twice.
static OPENED: Mutex<Vec<(String, Device)>> = Mutex::new(Vec::new());

/// The graphics APIs in cubecl's order of preference for this platform (`AutoGraphicsApi`).
fn apis() -> Vec<wgpu::Backend> {
    if cfg!(target_os = "macos") {
        vec![wgpu::Backend::Metal]
    } else {
        vec![
            wgpu::Backend::Vulkan,
            wgpu::Backend::Dx12,
            wgpu::Backend::Gl,
        ]
    }
}

fn api_name(api: wgpu::Backend) -> &'static str {
    match api {
        wgpu::Backend::Vulkan => "Vulkan",
        wgpu::Backend::Metal => "Metal",
        wgpu::Backend::Dx12 => "Dx12",
        wgpu::Backend::Gl => "Gl",
        _ => "other",
    }
}

/// Every adapter, API by API in order of preference. With `first_api_only`, the APIs after the
/// first that lists any adapter are not asked: where a Vulkan driver answers, a GPU would be
/// there too, and asking GL costs time and, on a machine without a display, Mesa's EGL prints
/// "XDG_RUNTIME_DIR is invalid" on stderr (its software GL also deadlocked wgpu-hal 30 here).
pub fn adapters(first_api_only: bool) -> Vec<AdapterInfo> {
    let _guard = PROBE.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = Vec::new();
    for api in apis() {
        let found = probe(api);
        let answered = !found.is_empty();
        all.extend(found);
        if first_api_only && answered {
            break;
        }
    }
    all
}

fn probe(api: wgpu::Backend) -> Vec<AdapterInfo> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: api.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    block_on(instance.enumerate_adapters(api.into()))
        .iter()
        .map(|adapter| {
            let info = adapter.get_info();
            AdapterInfo {
                kind: match info.device_type {
                    wgpu::DeviceType::DiscreteGpu => AdapterKind::DiscreteGpu,
                    wgpu::DeviceType::IntegratedGpu => AdapterKind::IntegratedGpu,
                    wgpu::DeviceType::VirtualGpu => AdapterKind::VirtualGpu,
                    wgpu::DeviceType::Cpu => AdapterKind::Cpu,
                    wgpu::DeviceType::Other => AdapterKind::Other,
                },
                api: api_name(api).into(),
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_string(),
                name: info.name,
            }
        })
        .collect()
}

/// Native wgpu answers `enumerate_adapters` at once; this only unwraps the future.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        std::thread::yield_now();
    }
}

/// Open `adapters[i]`, pinned to the API it was listed on, so the device is that adapter and
/// not whatever wgpu's own default would be.
pub fn open(adapters: &[AdapterInfo], i: usize) -> Result<Device, DeviceError> {
    let adapter = &adapters[i];
    let n = index_within_kind(adapters, i);
    let kind = match adapter.kind {
        AdapterKind::DiscreteGpu => DeviceKind::DiscreteGpu(n),
        AdapterKind::IntegratedGpu => DeviceKind::IntegratedGpu(n),
        AdapterKind::VirtualGpu => DeviceKind::VirtualGpu(n),
        AdapterKind::Cpu => DeviceKind::Cpu,
        // burn has no selector for "other" adapters; its default is wgpu's high-power pick.
        AdapterKind::Other => DeviceKind::DefaultDevice,
    };
    let api = match adapter.api.as_str() {
        "Vulkan" => WgpuBackend::Vulkan,
        "Metal" => WgpuBackend::Metal,
        "Dx12" => WgpuBackend::Dx12,
        "Gl" => WgpuBackend::Gl,
        _ => WgpuBackend::Auto,
    };
    let key = format!("{kind:?}@{api:?}");
    let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, device)) = opened.iter().find(|(k, _)| *k == key) {
        return Ok(device.clone());
    }
    let device = Device::wgpu_options()
        .device_kind(kind)
        .graphics_api(api)
        .init()
        .map_err(|e| DeviceError::Open {
            adapter: adapter.to_string(),
            reason: e.to_string(),
        })?;
    opened.push((key, device.clone()));
    Ok(device)
}

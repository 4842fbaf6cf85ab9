//! Adapter discovery and the device: which GPU a run uses, and the compiled pipelines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_kernels::DType;

use crate::GpuError;

/// Where the forward pass runs: `auto` (a discrete GPU if there is one, else the CPU), `cpu`,
/// or `gpu` / `gpu:N` (the best adapter, or adapter N as `kiln inspect --devices` lists them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Gpu(Option<usize>),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<DeviceChoice, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "gpu" => Ok(DeviceChoice::Gpu(None)),
            _ => match s.strip_prefix("gpu:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Gpu(Some(n))),
                _ => Err(format!("unknown device {s:?} (auto, cpu, gpu or gpu:N)")),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Gpu(None) => f.write_str("gpu"),
            DeviceChoice::Gpu(Some(n)) => write!(f, "gpu:{n}"),
        }
    }
}

/// One adapter as listed to users.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    /// "discrete", "integrated", "virtual", "cpu" (a software driver such as lavapipe) or "other".
    pub kind: &'static str,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "gpu:{} {} ({}, {})",
            self.index, self.name, self.kind, self.backend
        )
    }
}

fn kind(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete",
        wgpu::DeviceType::IntegratedGpu => "integrated",
        wgpu::DeviceType::VirtualGpu => "virtual",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

/// Preference when `gpu` names no adapter: real hardware first, a software driver last.
fn rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn instance() -> wgpu::Instance {
    let desc = wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    };
    wgpu::Instance::new(desc)
}

/// The adapters wgpu finds (Vulkan, Metal, DX12), in a stable order; empty without a driver.
fn adapters(inst: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut all =
        pollster::block_on(inst.enumerate_adapters(
            wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12,
        ));
    all.retain(|a| {
        let d = a.get_downlevel_capabilities();
        d.flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
    });
    all
}

/// The adapters this machine offers, as `--device gpu:N` numbers them.
pub fn list_adapters() -> Vec<AdapterSummary> {
    adapters(&instance())
        .iter()
        .enumerate()
        .map(|(index, a)| summary(index, a))
        .collect()
}

fn summary(index: usize, a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    AdapterSummary {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        kind: kind(info.device_type),
    }
}

/// The optional device features the kernels use when an adapter offers them; the portable
/// kernels (plain f32 arithmetic, workgroup-memory reductions) run everywhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// `shader-f16`: the tiled matrix kernel keeps its weight tile in f16 (half the workgroup
    /// memory; weights of F32/BF16 type keep f32 tiles, whose values f16 cannot hold).
    pub f16: bool,
    /// Subgroup operations (with subgroups of at least 8 invocations): the decode matrix kernel
    /// reduces each row's partial sums with subgroup shuffles instead of workgroup memory.
    pub subgroups: bool,
}

impl Features {
    /// Every optional feature the adapter offers.
    pub const ALL: Features = Features {
        f16: true,
        subgroups: true,
    };
    /// None: the portable kernels only.
    pub const PORTABLE: Features = Features {
        f16: false,
        subgroups: false,
    };

    /// The device features to request and the ones the kernels then use: those wanted that
    /// the adapter offers.
    fn offered(self, adapter: &wgpu::Adapter) -> (wgpu::Features, Features) {
        let has = adapter.features();
        let info = adapter.get_info();
        let f16 = self.f16 && has.contains(wgpu::Features::SHADER_F16);
        // The reduction shuffles within groups of 8 invocations, so a subgroup must hold 8.
        let subgroups =
            self.subgroups && has.contains(wgpu::Features::SUBGROUP) && info.subgroup_min_size >= 8;
        let mut req = wgpu::Features::empty();
        req.set(wgpu::Features::SHADER_F16, f16);
        req.set(wgpu::Features::SUBGROUP, subgroups);
        (req, Features { f16, subgroups })
    }
}

impl std::fmt::Display for Features {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.f16, self.subgroups) {
            (false, false) => f.write_str("portable"),
            (true, false) => f.write_str("f16"),
            (false, true) => f.write_str("subgroups"),
            (true, true) => f.write_str("f16 + subgroups"),
        }
    }
}

/// Whether this machine may have a GPU at all, decided without loading a driver: on Linux a
/// PCI display controller that is not a server's management or a virtual machine's display
/// (ASPEED, Matrox, QEMU, Cirrus, VMware, virtio, QXL, Hyper-V), or an NVIDIA, DRM render,
/// AMD KFD or WSL device node. Elsewhere (macOS, Windows: their drivers enumerate quietly and
/// cheaply) always true. `auto` opens no Vulkan instance when this is false: loading the
/// drivers (a software one such as lavapipe included) costs tens of MiB of resident memory and
/// Mesa prints warnings, all for a CPU run.
pub fn may_have_gpu() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let nodes = |dir: &str, prefix: &str| {
        std::fs::read_dir(dir).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
    };
    if nodes("/dev", "nvidia") || nodes("/dev/dri", "renderD") || nodes("/dev", "kfd") {
        return true;
    }
    if std::path::Path::new("/dev/dxg").exists() {
        return true;
    }
    const NOT_GPUS: [&str; 9] = [
        "0x1a03", "0x102b", "0x1234", "0x1013", "0x15ad", "0x1af4", "0x1b36", "0x1414", "0x1de1",
    ];
    let Ok(devices) = std::fs::read_dir("/sys/bus/pci/devices") else {
        return false;
    };
    devices.flatten().any(|d| {
        let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default();
        read("class").trim().starts_with("0x03") && !NOT_GPUS.contains(&read("vendor").trim())
    })
}

/// The note of an `auto` placement on a machine where [`may_have_gpu`] found nothing: the
/// CPU, as asked for by default, which the CLI does not announce.
pub const NO_GPU_NOTE: &str = "device: cpu (no GPU found)";

/// The size of the adapter's largest device-local memory heap, where its backend reports one
/// (Vulkan: `vkGetPhysicalDeviceMemoryProperties`). A software driver (lavapipe) reports the
/// host's memory.
#[cfg(not(target_vendor = "apple"))]
fn adapter_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    // SAFETY: the hal adapter is only read (its instance and physical device handles), while
    // `adapter` keeps it alive; nothing is destroyed or created through it.
    let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
    let instance = hal.shared_instance().raw_instance();
    // SAFETY: a query on a valid physical device of a live instance.
    let props =
        unsafe { instance.get_physical_device_memory_properties(hal.raw_physical_device()) };
    props
        .memory_heaps_as_slice()
        .iter()
        .filter(|h| h.flags.as_raw() & 1 != 0) // VK_MEMORY_HEAP_DEVICE_LOCAL_BIT
        .map(|h| h.size)
        .max()
}

#[cfg(target_vendor = "apple")]
fn adapter_memory(_adapter: &wgpu::Adapter) -> Option<u64> {
    None
}

/// What [`Gpu::open`] decided: the device, if any, and a line to show the user.
pub struct Placement {
    pub gpu: Option<Arc<Gpu>>,
    /// Says where the model runs and why ("running on the CPU: no GPU adapter found").
    pub note: String,
}

/// A GPU device, its queue and the pipelines compiled for it.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    /// The optional features the kernels use on this device.
    pub features: Features,
    /// The largest buffer range one binding may cover (weights larger than this are split).
    pub max_binding: u64,
    /// Device memory as the adapter reports it (its largest device-local Vulkan heap); `None`
    /// where the backend does not say (Metal, DX12).
    pub memory: Option<u64>,
    pipelines: Mutex<HashMap<(&'static str, Option<DType>), Pipeline>>,
}

#[derive(Clone)]
pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

impl Gpu {
    /// Opens the device `choice` asks for. `Ok(None)` placements run on the CPU: `cpu`, or
    /// `auto` without a discrete GPU, or `gpu` on a machine without any adapter (its note
    /// says so). `gpu:N` beyond the adapters found is an error, as is a device that fails to
    /// open. The kernels use every optional feature the adapter offers.
    pub fn open(choice: DeviceChoice) -> Result<Placement, GpuError> {
        Gpu::open_with(choice, Features::ALL)
    }

    /// [`Gpu::open`] with the optional features to use where the adapter offers them
    /// ([`Features::PORTABLE`]: none; tests open one adapter both ways).
    pub fn open_with(choice: DeviceChoice, wanted: Features) -> Result<Placement, GpuError> {
        if choice == DeviceChoice::Auto && !may_have_gpu() {
            return Ok(Placement {
                gpu: None,
                note: NO_GPU_NOTE.into(),
            });
        }
        if choice == DeviceChoice::Cpu {
            return Ok(Placement {
                gpu: None,
                note: "device: cpu".into(),
            });
        }
        let inst = instance();
        let all = adapters(&inst);
        let listed = || {
            if all.is_empty() {
                "none".to_string()
            } else {
                all.iter()
                    .enumerate()
                    .map(|(i, a)| summary(i, a).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let pick = match choice {
            DeviceChoice::Cpu => unreachable!("handled above"),
            DeviceChoice::Auto => all
                .iter()
                .position(|a| a.get_info().device_type == wgpu::DeviceType::DiscreteGpu),
            DeviceChoice::Gpu(None) => {
                (0..all.len()).min_by_key(|&i| rank(all[i].get_info().device_type))
            }
            DeviceChoice::Gpu(Some(n)) => {
                if n >= all.len() {
                    return Err(GpuError::Device(format!(
                        "--device gpu:{n}: no such adapter (found: {})",
                        listed()
                    )));
                }
                Some(n)
            }
        };
        let Some(index) = pick else {
            let why = if all.is_empty() {
                "no GPU adapter or driver found".to_string()
            } else {
                format!(
                    "no discrete GPU (adapters: {}; --device gpu uses one)",
                    listed()
                )
            };
            return Ok(Placement {
                gpu: None,
                note: format!("device: cpu ({why})"),
            });
        };
        let gpu = Gpu::from_adapter(index, &all[index], wanted)?;
        let note = format!("device: {}, kernels: {}", gpu.adapter, gpu.features);
        Ok(Placement {
            gpu: Some(Arc::new(gpu)),
            note,
        })
    }

    fn from_adapter(
        index: usize,
        adapter: &wgpu::Adapter,
        wanted: Features,
    ) -> Result<Gpu, GpuError> {
        let limits = adapter.limits();
        let (required_features, features) = wanted.offered(adapter);
        let desc = wgpu::DeviceDescriptor {
            label: Some("kiln"),
            required_features,
            // Everything the adapter offers: the defaults cap buffers well below what model
            // weights need.
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| GpuError::Device(format!("opening {}: {e}", adapter.get_info().name)))?;
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        Ok(Gpu {
            device,
            queue,
            adapter: summary(index, adapter),
            features,
            max_binding,
            memory: adapter_memory(adapter),
            pipelines: Mutex::new(HashMap::new()),
        })
    }

    /// The pipeline of `entry` in the weight-type module of `dtype` (`Some`) or in the row
    /// operations module (`None`), compiled on first use.
    pub(crate) fn pipeline(&self, entry: &'static str, dtype: Option<DType>) -> Pipeline {
        let mut map = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get(&(entry, dtype)) {
            return p.clone();
        }
        let source = match dtype {
            Some(t) => crate::ops::weight_shader(t, self.features),
            None => include_str!("shaders/ops.wgsl").to_string(),
        };
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(entry),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        let layout = pipeline.get_bind_group_layout(0);
        let p = Pipeline { pipeline, layout };
        map.insert((entry, dtype), p.clone());
        p
    }

    /// A storage buffer of `size` bytes (at least 16), zeroed.
    pub fn buffer(&self, size: u64, label: &str) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(16).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `bytes` (padded to a multiple of 4, at least 16 bytes).
    pub fn buffer_with(&self, bytes: &[u8], label: &str) -> wgpu::Buffer {
        let b = self.buffer(bytes.len() as u64, label);
        self.write(&b, 0, bytes);
        b
    }

    /// Queues a write of `bytes` at `offset` (applied before the next submission).
    pub fn write(&self, buf: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if bytes.len().is_multiple_of(4) {
            self.queue.write_buffer(buf, offset, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            self.queue.write_buffer(buf, offset, &padded);
        }
    }

    /// Copies `len` f32 values from the start of `buf` back to the host (waits for the queue).
    pub fn read_f32(&self, buf: &wgpu::Buffer, len: usize) -> Result<Vec<f32>, GpuError> {
        let size = (len * 4) as u64;
        if size == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(buf, 0, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Device(format!("waiting for the GPU: {e}")))?;
        rx.recv()
            .map_err(|_| GpuError::Device("readback never completed".into()))?
            .map_err(|e| GpuError::Device(format!("reading back: {e}")))?;
        let view = slice
            .get_mapped_range()
            .map_err(|e| GpuError::Device(format!("reading back: {e:?}")))?;
        let out = view
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        drop(view);
        staging.unmap();
        Ok(out)
    }
}

//! `mixc-emu`: a PTX emulator.
//!
//! It parses the PTX text that LLVM's NVPTX back end writes for a bundle
//! and runs its kernels on the CPU, the 32 threads of a warp in lockstep,
//! following the PTX ISA: integer and floating-point arithmetic with their
//! rounding modes, conversions, predicates and branches, global, shared,
//! local and parameter memory, barriers, `shfl.sync`, `mma.sync` and
//! `wgmma` (matrix descriptors, asynchronous groups).
//!
//! It reports what a GPU would fault on or silently hide as located
//! errors ([`EmuError`]: kernel, line, block, thread, address): accesses
//! out of bounds or misaligned, barriers not reached by every thread,
//! shared-memory races between barriers, and reads of registers or
//! shared memory never written. An instruction it does not implement is
//! refused when the module is loaded, never skipped.
//!
//! Pure Rust, no dependencies: the runtime's device interface uses it.

mod alu;
mod exec;
pub mod float;
pub mod ir;
mod lex;
mod mem;
mod parse;

pub use ir::Module;
pub use mem::Memory;
use std::fmt;
use std::time::Instant;

/// Parses PTX text.
pub fn parse(ptx: &str) -> Result<Module, String> {
    parse::parse(ptx)
}

/// Something a GPU would fault on or hide, located.
#[derive(Clone, Debug, PartialEq)]
pub struct EmuError {
    pub msg: String,
    pub kernel: String,
    /// The line in the PTX text, and the instruction as written.
    pub line: u32,
    pub instr: String,
    pub block: Option<[u32; 3]>,
    pub thread: Option<[u32; 3]>,
    pub address: Option<u64>,
}

impl EmuError {
    fn plain(kernel: &str, msg: String) -> Box<EmuError> {
        Box::new(EmuError {
            msg,
            kernel: kernel.to_string(),
            line: 0,
            instr: String::new(),
            block: None,
            thread: None,
            address: None,
        })
    }
}

impl fmt::Display for EmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (kernel `{}`", self.msg, self.kernel)?;
        if self.line > 0 {
            write!(f, ", PTX line {}: `{}`", self.line, self.instr)?;
        }
        if let Some([x, y, z]) = self.block {
            write!(f, ", block ({x}, {y}, {z})")?;
        }
        if let Some([x, y, z]) = self.thread {
            write!(f, ", thread ({x}, {y}, {z})")?;
        }
        if let Some(a) = self.address {
            write!(f, ", address {a:#x}")?;
        }
        write!(f, ")")
    }
}

impl std::error::Error for EmuError {}

/// What a launch executed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Instructions issued per warp (one per group of lanes).
    pub warp_instructions: u64,
    /// Instructions executed per thread (lanes enabled).
    pub thread_instructions: u64,
    pub seconds: f64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.warp_instructions += o.warp_instructions;
        self.thread_instructions += o.thread_instructions;
        self.seconds += o.seconds;
    }

    /// Thread instructions per second.
    pub fn rate(&self) -> f64 {
        self.thread_instructions as f64 / self.seconds.max(1e-12)
    }
}

/// A module loaded on a [`Machine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleId(usize);

struct Loaded {
    module: Module,
    globals: Vec<u64>,
}

/// The emulated device: global memory and loaded modules.
pub struct Machine {
    pub mem: Memory,
    modules: Vec<Loaded>,
    /// Everything launched so far.
    pub stats: Stats,
    /// Warp instructions one launch may execute before it is stopped as
    /// an endless loop.
    pub limit: u64,
    /// Whether shared-memory races are reported.
    pub check_races: bool,
    launches: u64,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            mem: Memory::default(),
            modules: Vec::new(),
            stats: Stats::default(),
            limit: 20_000_000_000,
            check_races: true,
            launches: 0,
        }
    }
}

impl Machine {
    pub fn new() -> Machine {
        Machine::default()
    }

    /// Parses PTX and places its global variables in memory.
    pub fn load(&mut self, ptx: &str) -> Result<ModuleId, String> {
        let module = parse(ptx)?;
        let mut globals = Vec::new();
        for g in &module.globals {
            let a = self.mem.alloc(g.init.len());
            self.mem.write(a, &g.init)?;
            globals.push(a);
        }
        self.modules.push(Loaded { module, globals });
        Ok(ModuleId(self.modules.len() - 1))
    }

    pub fn module(&self, id: ModuleId) -> &Module {
        &self.modules[id.0].module
    }

    /// Runs `kernel` over `grid` blocks of `block` threads. `args` holds
    /// one value per kernel parameter (a pointer or an integer, stored in
    /// the parameter's width); `dyn_shared` bytes of dynamic shared
    /// memory follow the static ones.
    pub fn launch(
        &mut self,
        id: ModuleId,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        dyn_shared: u32,
        args: &[u64],
    ) -> Result<Stats, Box<EmuError>> {
        let loaded = self
            .modules
            .get(id.0)
            .ok_or_else(|| EmuError::plain(kernel, "no such module".into()))?;
        let k = loaded.module.kernel(kernel).ok_or_else(|| {
            EmuError::plain(kernel, "no kernel of this name in the module".into())
        })?;
        if args.len() != k.params.len() {
            return Err(EmuError::plain(
                kernel,
                format!(
                    "launched with {} arguments; the kernel takes {}",
                    args.len(),
                    k.params.len()
                ),
            ));
        }
        let threads = u64::from(block[0]) * u64::from(block[1]) * u64::from(block[2]);
        if threads == 0 || threads > 1024 {
            return Err(EmuError::plain(
                kernel,
                format!("a block of {threads} threads (1 to 1024)"),
            ));
        }
        if let Some(m) = k.maxntid {
            let most = u64::from(m[0]) * u64::from(m[1]) * u64::from(m[2]);
            if threads > most {
                return Err(EmuError::plain(
                    kernel,
                    format!("a block of {threads} threads, over the kernel's .maxntid of {most}"),
                ));
            }
        }
        let mut params = vec![0u8; k.param_bytes as usize];
        for (p, v) in k.params.iter().zip(args) {
            let b = v.to_le_bytes();
            let n = (p.bytes as usize).min(8);
            params[p.offset as usize..p.offset as usize + n].copy_from_slice(&b[..n]);
        }
        // Limits a GPU enforces at launch.
        if block[0] > 1024 || block[1] > 1024 || block[2] > 64 {
            return Err(EmuError::plain(
                kernel,
                format!("block {block:?} is over the limits (1024, 1024, 64)"),
            ));
        }
        if grid[0] > i32::MAX as u32 || grid[1] > 65535 || grid[2] > 65535 {
            return Err(EmuError::plain(
                kernel,
                format!("grid {grid:?} is over the limits (2^31 - 1, 65535, 65535)"),
            ));
        }
        if k.shared_bytes > 48 * 1024 {
            return Err(EmuError::plain(
                kernel,
                format!(
                    "{} bytes of static shared memory, over the 48 KiB a kernel may declare",
                    k.shared_bytes
                ),
            ));
        }
        if k.shared_bytes + dyn_shared > 227 * 1024 {
            return Err(EmuError::plain(
                kernel,
                format!(
                    "{} bytes of shared memory a block, over 227 KiB",
                    k.shared_bytes + dyn_shared
                ),
            ));
        }
        self.launches += 1;
        self.mem.launch = self.launches;
        let t0 = Instant::now();
        let mut run = exec::Launch {
            k,
            globals: &loaded.globals,
            params,
            grid,
            block,
            dyn_shared,
            mem: &mut self.mem,
            stats: Stats::default(),
            limit: self.limit,
            check_races: self.check_races,
        };
        let r = run.run();
        let mut stats = run.stats;
        self.mem.launch = 0;
        stats.seconds = t0.elapsed().as_secs_f64();
        self.stats.add(&stats);
        r.map(|()| stats)
    }
}

//! Bundles: what `mixc build` writes and every runner reads.
//!
//! A bundle is a directory with `manifest.json` and one object: PTX text
//! (`kernels.ptx`) for a GPU target, a shared library (`kernels.so`) for
//! the CPU. The manifest says everything a runner needs and nothing more:
//! the sizes (fixed at build time, or free and given at run time), every
//! buffer with its shape and, for inputs and parameters, its initialiser,
//! and the kernels in launch order with their entry names and launch
//! geometry as size expressions ([`crate::dim::Dim`] text). Sizes are
//! evaluated in declaration order, so derived sizes may use earlier ones.

use crate::dim::Dim;
use crate::{init_tensor, Dtype, Fill};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The manifest format this runtime reads.
pub const FORMAT: &str = "mixc-bundle/1";

/// The file name of a bundle's manifest.
pub const MANIFEST: &str = "manifest.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The mixer compiled, and the file it came from.
    pub mixer: String,
    pub source: String,
    /// `cpu`, `sm_80` or `sm_90`.
    pub target: String,
    /// Storage type of the activations (inputs, values computed from
    /// them, the output); each value's own is in `values`.
    pub dtype: String,
    /// The content hash that names this bundle in the cache.
    pub hash: String,
    /// The compiler that wrote it (`mixc 0.1.0`).
    pub compiler: String,
    /// The object file, relative to the bundle directory.
    pub object: String,
    pub sizes: Vec<SizeEntry>,
    pub values: Vec<ValueEntry>,
    /// Indices into `values`.
    pub inputs: Vec<usize>,
    pub output: usize,
    pub kernels: Vec<KernelEntry>,
}

/// A size: `value` is `None` when it is given at run time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SizeEntry {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Input,
    Param,
    /// Written by a kernel (an intermediate or the output).
    Computed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueEntry {
    pub name: String,
    pub role: Role,
    /// Row-major extents, as size expressions.
    pub shape: Vec<String>,
    /// How inputs and parameters are filled from the seed (inputs: standard
    /// normal); `None` for computed values.
    pub fill: Option<Fill>,
    /// False for an intermediate a fused kernel keeps on chip: it gets no
    /// buffer.
    #[serde(default = "yes")]
    pub materialized: bool,
    /// How its buffer is stored.
    #[serde(default)]
    pub dtype: Dtype,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelEntry {
    /// Its position in launch order, from 1: the kernel's id in `mixc
    /// explain`, `mixc-runner --profile` and `mixc bench`.
    #[serde(default)]
    pub id: usize,
    /// The schedule it lowers (`generic`, `fused attention`, `fft conv
    /// (library)`, `blocked fft conv`, `scan + readout`), as `mixc explain`
    /// names it.
    #[serde(default)]
    pub schedule: String,
    /// The symbol to call (`op3`).
    pub entry: String,
    /// The value it writes (an index into `values`) and the IR op kind.
    pub writes: usize,
    pub kind: String,
    /// CPU: the extent of the axis split across threads (`None`: one call).
    pub parallel: Option<String>,
    /// GPU: grid and block dimensions; the grid as size expressions.
    pub grid: Option<[String; 3]>,
    pub block: Option<[u32; 3]>,
    /// Static shared memory per block, in bytes.
    pub shared_bytes: u32,
    /// Every kernel takes `(buffers, sizes, error)`: a table of buffer
    /// pointers in `values` order, the sizes in `sizes` order as `i64`, and
    /// an `i64` error flag set on integer division by zero. CPU kernels
    /// also take `[lo, hi)` of their parallel axis.
    pub signature: String,
    /// A kernel the runtime itself provides instead of the object (the FFT
    /// long convolution and matrix products on the CPU), with its
    /// operands' layout.
    #[serde(default)]
    pub library: Option<Library>,
    /// False for a kernel whose value depends only on parameters and sizes
    /// (Hyena's implicit filter, ALiBi's slopes): runners run it once, when
    /// they prepare the buffers, not on every call.
    #[serde(default = "yes")]
    pub per_call: bool,
    /// How the kernel takes its buffers.
    #[serde(default)]
    pub args: Args,
}

/// A kernel's argument convention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Args {
    /// `(buffers, sizes, error)`: three pointers, the first to a table of
    /// buffer pointers (the LLVM path).
    #[default]
    Table,
    /// MLIR's memref convention: every buffer (in `values` order), then the
    /// sizes and the error flag, each as five words (allocated pointer,
    /// aligned pointer, offset, length, stride).
    Memref,
}

/// A loaded manifest and where it lives.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// Sizes bound for one run: every size's value, and the sizes array the
/// kernels take.
#[derive(Clone, Debug, PartialEq)]
pub struct Bound {
    pub sizes: BTreeMap<String, i64>,
    pub ordered: Vec<i64>,
    pub shapes: Vec<Vec<usize>>,
    /// Which values get a buffer.
    pub materialized: Vec<bool>,
    /// How each value's buffer is stored.
    pub dtypes: Vec<Dtype>,
}

impl Bound {
    pub fn elements(&self, value: usize) -> usize {
        self.shapes[value].iter().product()
    }

    /// Bytes of every materialised buffer together, in the storage type.
    pub fn bytes(&self) -> u64 {
        (0..self.shapes.len())
            .filter(|k| self.materialized[*k])
            .map(|k| (self.elements(k) * self.dtypes[k].bytes()) as u64)
            .sum()
    }
}

impl Bundle {
    /// Reads `DIR/manifest.json`, checking the format and the object file.
    pub fn load(dir: &Path) -> Result<Bundle, String> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a mixc manifest: {e}", path.display()))?;
        if manifest.format != FORMAT {
            return Err(format!(
                "{} has format `{}`; this runtime reads `{FORMAT}`",
                path.display(),
                manifest.format
            ));
        }
        let dtype =
            Dtype::parse(&manifest.dtype).map_err(|e| format!("{}: {e}", path.display()))?;
        let narrow = manifest.values.iter().any(|v| v.dtype != Dtype::F32);
        if (dtype != Dtype::F32 || narrow) && !manifest.target.starts_with("sm_") {
            return Err(format!(
                "{}: {dtype} storage is for GPU bundles; a {} bundle stores f32",
                path.display(),
                manifest.target
            ));
        }
        let object = dir.join(&manifest.object);
        if !object.is_file() {
            return Err(format!(
                "the bundle's object {} is missing",
                object.display()
            ));
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// How the bundle stores its buffers (checked by [`Bundle::load`]).
    pub fn dtype(&self) -> Dtype {
        Dtype::parse(&self.manifest.dtype).unwrap_or_default()
    }

    pub fn object_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.object)
    }

    /// The sizes a run must give.
    pub fn free_sizes(&self) -> Vec<String> {
        self.manifest
            .sizes
            .iter()
            .filter(|s| s.value.is_none())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Binds the free sizes and evaluates every size and shape.
    pub fn bind(&self, free: &BTreeMap<String, i64>) -> Result<Bound, String> {
        for k in free.keys() {
            if !self.manifest.sizes.iter().any(|s| &s.name == k) {
                return Err(format!(
                    "`{k}` is not a size of this bundle (its sizes: {})",
                    self.manifest
                        .sizes
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let mut sizes = BTreeMap::new();
        let mut ordered = Vec::new();
        for s in &self.manifest.sizes {
            let v = match &s.value {
                None => *free
                    .get(&s.name)
                    .ok_or_else(|| format!("size `{}` must be given at run time", s.name))?,
                Some(text) => {
                    if let Some(v) = free.get(&s.name) {
                        let fixed = Dim::parse(text)?.eval(&sizes)?;
                        if *v != fixed {
                            return Err(format!(
                                "`{}` was fixed to {fixed} when the bundle was built, not {v}",
                                s.name
                            ));
                        }
                    }
                    Dim::parse(text)?.eval(&sizes)?
                }
            };
            if v < 1 {
                return Err(format!(
                    "size `{}` is {v}; sizes must be at least 1",
                    s.name
                ));
            }
            sizes.insert(s.name.clone(), v);
            ordered.push(v);
        }
        let mut shapes = Vec::new();
        for v in &self.manifest.values {
            let mut shape = Vec::new();
            for d in &v.shape {
                let n = Dim::parse(d)?.eval(&sizes)?;
                shape.push(n.max(0) as usize);
            }
            shapes.push(shape);
        }
        Ok(Bound {
            sizes,
            ordered,
            shapes,
            materialized: self
                .manifest
                .values
                .iter()
                .map(|v| v.materialized)
                .collect(),
            dtypes: self.manifest.values.iter().map(|v| v.dtype).collect(),
        })
    }

    /// Every buffer, inputs and parameters filled from `seed` exactly as the
    /// interpreter fills them (computed then rounded to `f32`; a runner
    /// storing another dtype rounds again on upload), the rest 0.
    pub fn init_buffers(&self, bound: &Bound, seed: u64) -> Vec<Vec<f32>> {
        self.init_buffers_with(bound, seed, 0.0)
    }

    /// As [`Bundle::init_buffers`], computed buffers filled with `computed`
    /// (NaN poisons them, so a value a kernel fails to write shows).
    pub fn init_buffers_with(&self, bound: &Bound, seed: u64, computed: f32) -> Vec<Vec<f32>> {
        self.manifest
            .values
            .iter()
            .enumerate()
            .map(|(k, v)| match v.fill {
                Some(fill) => init_tensor(&bound.shapes[k], fill, seed, &v.name)
                    .data
                    .iter()
                    .map(|x| *x as f32)
                    .collect(),
                None if !v.materialized => Vec::new(),
                None => vec![computed; bound.elements(k)],
            })
            .collect()
    }

    /// Evaluates a launch expression.
    pub fn eval(&self, text: &str, bound: &Bound) -> Result<i64, String> {
        Dim::parse(text)?.eval(&bound.sizes)
    }
}

/// Median, fastest and slowest of repeated timings, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub reps: usize,
}

impl Timing {
    pub fn from_samples(mut s: Vec<f64>) -> Timing {
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            s[n / 2]
        } else {
            0.5 * (s[n / 2 - 1] + s[n / 2])
        };
        Timing {
            median,
            min: s.first().copied().unwrap_or(f64::NAN),
            max: s.last().copied().unwrap_or(f64::NAN),
            reps: n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        let t = Timing::from_samples(vec![3.0, 1.0, 2.0]);
        assert_eq!((t.median, t.min, t.max, t.reps), (2.0, 1.0, 3.0, 3));
        let t = Timing::from_samples(vec![4.0, 1.0, 2.0, 3.0]);
        assert_eq!(t.median, 2.5);
    }
}

/// The runtime's own kernels, with their operands' layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Library {
    /// A long causal convolution by FFT ([`crate::fft`]).
    FftConv(crate::fft::ConvSpec),
    /// A matrix product ([`crate::gemm`]).
    Gemm(crate::gemm::GemmSpec),
}

//! Global memory: a set of allocations. An address outside every
//! allocation is out of bounds, as it would fault (or silently read
//! another buffer) on a GPU.

pub(crate) struct Alloc {
    pub base: u64,
    pub data: Vec<u8>,
    /// The launch that last wrote it (0: the host).
    pub written: u64,
}

/// The emulated device's global memory.
pub struct Memory {
    /// Sorted by base address.
    allocs: Vec<Alloc>,
    next: u64,
    /// The allocation the last access hit.
    last: std::cell::Cell<usize>,
    /// The launch running (from 1), 0 between launches.
    pub(crate) launch: u64,
}

/// Where the first allocation starts; a gap of `GUARD` bytes separates
/// allocations, so a small overrun never lands in a neighbour.
const START: u64 = 0x7f00_0000_0000;
const GUARD: u64 = 4096;

impl Default for Memory {
    fn default() -> Self {
        Memory {
            allocs: Vec::new(),
            next: START,
            last: std::cell::Cell::new(0),
            launch: 0,
        }
    }
}

impl Memory {
    /// A new zeroed allocation of `bytes` (at least one), 256-byte aligned.
    pub fn alloc(&mut self, bytes: usize) -> u64 {
        let base = self.next;
        let len = bytes.max(1) as u64;
        self.next = (base + len + GUARD).div_ceil(256) * 256;
        self.allocs.push(Alloc {
            base,
            data: vec![0; bytes.max(1)],
            written: 0,
        });
        base
    }

    /// Frees the allocation that starts at `base`.
    pub fn free(&mut self, base: u64) -> Result<(), String> {
        match self.allocs.binary_search_by_key(&base, |a| a.base) {
            Ok(k) => {
                self.allocs.remove(k);
                self.last.set(0);
                Ok(())
            }
            Err(_) => Err(format!("{base:#x} is not an allocation")),
        }
    }

    /// The length of the allocation that starts at `base`.
    pub fn len_of(&self, base: u64) -> Option<usize> {
        self.allocs
            .binary_search_by_key(&base, |a| a.base)
            .ok()
            .map(|k| self.allocs[k].data.len())
    }

    /// Bytes held by all allocations.
    pub fn bytes(&self) -> u64 {
        self.allocs.iter().map(|a| a.data.len() as u64).sum()
    }

    fn find(&self, addr: u64, len: u64) -> Result<(usize, usize), String> {
        let inside =
            |a: &Alloc| addr >= a.base && addr.saturating_add(len) <= a.base + a.data.len() as u64;
        let last = self.last.get();
        if let Some(a) = self.allocs.get(last) {
            if inside(a) {
                return Ok((last, (addr - a.base) as usize));
            }
        }
        let k = self.allocs.partition_point(|a| a.base <= addr);
        if k > 0 && inside(&self.allocs[k - 1]) {
            self.last.set(k - 1);
            return Ok((k - 1, (addr - self.allocs[k - 1].base) as usize));
        }
        Err(self.describe(addr))
    }

    /// Where `addr` lies relative to the nearest allocation below it.
    fn describe(&self, addr: u64) -> String {
        let k = self.allocs.partition_point(|a| a.base <= addr);
        if k == 0 {
            return "below every allocation".into();
        }
        let a = &self.allocs[k - 1];
        let end = a.base + a.data.len() as u64;
        if addr < end {
            format!(
                "crosses the end of the allocation at {:#x} of {} bytes",
                a.base,
                a.data.len()
            )
        } else {
            format!(
                "{} bytes past the end of the allocation at {:#x} of {} bytes",
                addr - end,
                a.base,
                a.data.len()
            )
        }
    }

    pub fn write(&mut self, addr: u64, src: &[u8]) -> Result<(), String> {
        let (k, off) = self.find(addr, src.len() as u64)?;
        self.allocs[k].data[off..off + src.len()].copy_from_slice(src);
        self.allocs[k].written = self.launch;
        Ok(())
    }

    /// A read through the non-coherent cache (`ld.global.nc`): the
    /// allocation must not be written by the running kernel, whose writes
    /// that path may not see.
    pub(crate) fn read_nc(&self, addr: u64, dst: &mut [u8]) -> Result<(), String> {
        let (k, _) = self.find(addr, dst.len() as u64)?;
        let a = &self.allocs[k];
        if self.launch != 0 && a.written == self.launch {
            return Err(format!(
                "ld.global.nc from the allocation at {:#x}, which this kernel writes: the non-coherent path may return stale data",
                a.base
            ));
        }
        self.read_into(addr, dst)
    }

    pub fn read_into(&self, addr: u64, dst: &mut [u8]) -> Result<(), String> {
        let (k, off) = self.find(addr, dst.len() as u64)?;
        dst.copy_from_slice(&self.allocs[k].data[off..off + dst.len()]);
        Ok(())
    }
}

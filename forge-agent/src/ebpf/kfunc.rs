//! Kernel function (kfunc) calls in the embedded object.
//!
//! aya 0.14 does not relocate kfunc calls, so the kernel programs call a
//! placeholder helper number that no kernel has
//! ([`forge_common::kfunc::SIGNAL_TASK_CALL`]). Before the object is
//! loaded, every such call instruction in its executable sections is
//! rewritten:
//!
//! - into a kfunc call (`src_reg = BPF_PSEUDO_KFUNC_CALL`, `imm` = the
//!   function's BTF id in the running kernel's vmlinux BTF), when the kernel
//!   has the function;
//! - into `r0 = -ENOSYS` otherwise, which the program reads as "this kernel
//!   cannot" and takes its fallback.
//!
//! Either way the instruction count stays the same, so jumps, line and
//! function info in the object stay valid.

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `BPF_ALU64 | BPF_MOV | BPF_K`: `dst = imm`.
const MOV64_IMM: u8 = 0xb7;
/// `src_reg` of a call to a kernel function by BTF id.
const PSEUDO_KFUNC_CALL: u8 = 2;
const ENOSYS: i32 = 38;
/// `SHF_EXECINSTR`: the section holds program instructions.
const SHF_EXECINSTR: u64 = 0x4;
/// `SHT_NOBITS`: the section has no bytes in the file.
const SHT_NOBITS: u32 = 8;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum KfuncError {
    #[error("the embedded eBPF object is not a little-endian ELF64 file")]
    NotElf64,
    #[error("the embedded eBPF object's section headers are out of bounds ({0})")]
    Sections(&'static str),
}

/// The object, rewritten, in memory aligned for the ELF parser.
pub struct Patched {
    words: Vec<u64>,
    len: usize,
    /// Placeholder calls rewritten.
    pub calls: usize,
}

impl Patched {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` owns at least `len` initialised bytes (it was
        // filled from a slice of that length), and u8 has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

fn field<const N: usize>(b: &[u8], at: usize, off: usize) -> Option<[u8; N]> {
    let start = at.checked_add(off)?;
    b.get(start..start.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    field(b, at, 0).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], at: usize, off: usize) -> Option<u32> {
    field(b, at, off).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], at: usize, off: usize) -> Option<u64> {
    field(b, at, off).map(u64::from_le_bytes)
}

/// Byte ranges of the executable sections of a little-endian ELF64 file.
fn exec_sections(elf: &[u8]) -> Result<Vec<std::ops::Range<usize>>, KfuncError> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(KfuncError::NotElf64);
    }
    let shoff = u64_at(elf, 0x28, 0).ok_or(KfuncError::Sections("header"))? as usize;
    let shentsize = usize::from(u16_at(elf, 0x3a).ok_or(KfuncError::Sections("header"))?);
    let shnum = usize::from(u16_at(elf, 0x3c).ok_or(KfuncError::Sections("header"))?);
    if shentsize < 0x28 {
        return Err(KfuncError::Sections("entry size"));
    }
    let mut out = Vec::new();
    for i in 0..shnum {
        let sh = shoff
            .checked_add(i.checked_mul(shentsize).ok_or(KfuncError::Sections("table"))?)
            .ok_or(KfuncError::Sections("table"))?;
        let table = KfuncError::Sections("table");
        let ty = u32_at(elf, sh, 4).ok_or(table.clone())?;
        let flags = u64_at(elf, sh, 8).ok_or(table.clone())?;
        let offset = u64_at(elf, sh, 24).ok_or(table.clone())? as usize;
        let size = u64_at(elf, sh, 32).ok_or(table)? as usize;
        if flags & SHF_EXECINSTR == 0 || ty == SHT_NOBITS {
            continue;
        }
        let end =
            offset.checked_add(size).filter(|e| *e <= elf.len()).ok_or(KfuncError::Sections("section"))?;
        out.push(offset..end);
    }
    Ok(out)
}

/// Rewrites every call of `placeholder` in `object`'s executable sections
/// into a call of the kfunc with BTF id `kfunc` (or `r0 = -ENOSYS` when it
/// is `None`).
pub fn patch(object: &[u8], placeholder: i32, kfunc: Option<u32>) -> Result<Patched, KfuncError> {
    let sections = exec_sections(object)?;
    let mut words = vec![0u64; object.len().div_ceil(8)];
    // SAFETY: `words` spans at least `object.len()` bytes; u8 views of u64
    // memory are always valid.
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), object.len()) };
    bytes.copy_from_slice(object);
    let mut calls = 0;
    for range in sections {
        let mut at = range.start;
        while at + 8 <= range.end {
            let insn = &mut bytes[at..at + 8];
            let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            if insn[0] == CALL && insn[1] == 0 && insn[2] == 0 && insn[3] == 0 && imm == placeholder {
                let (code, regs, imm) = match kfunc {
                    Some(id) => (CALL, PSEUDO_KFUNC_CALL << 4, id as i32),
                    None => (MOV64_IMM, 0, -ENOSYS),
                };
                insn[0] = code;
                insn[1] = regs;
                insn[4..8].copy_from_slice(&imm.to_le_bytes());
                calls += 1;
            }
            at += 8;
        }
    }
    Ok(Patched { words, len: object.len(), calls })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLACEHOLDER: i32 = forge_common::kfunc::SIGNAL_TASK_CALL;

    fn insn(code: u8, regs: u8, imm: i32) -> [u8; 8] {
        let mut i = [code, regs, 0, 0, 0, 0, 0, 0];
        i[4..].copy_from_slice(&imm.to_le_bytes());
        i
    }

    /// A minimal ELF64 with a null section, one executable section holding
    /// `text` and one data section holding `data`.
    fn elf(text: &[[u8; 8]], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        let text_at = out.len();
        for i in text {
            out.extend_from_slice(i);
        }
        let data_at = out.len();
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let shoff = out.len();
        let section = |ty: u32, flags: u64, offset: usize, size: usize| {
            let mut sh = [0u8; 64];
            sh[4..8].copy_from_slice(&ty.to_le_bytes());
            sh[8..16].copy_from_slice(&flags.to_le_bytes());
            sh[24..32].copy_from_slice(&(offset as u64).to_le_bytes());
            sh[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            sh
        };
        out.extend_from_slice(&section(0, 0, 0, 0));
        out.extend_from_slice(&section(1, SHF_EXECINSTR | 2, text_at, text.len() * 8));
        out.extend_from_slice(&section(1, 2, data_at, data.len()));
        out[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        out
    }

    #[test]
    fn placeholder_calls_become_kfunc_calls() {
        let text = [insn(0xb7, 0x01, 9), insn(CALL, 0, PLACEHOLDER), insn(CALL, 0, 14), insn(0x95, 0, 0)];
        // The same bytes in a data section are left alone.
        let data = insn(CALL, 0, PLACEHOLDER);
        let object = elf(&text, &data);
        let p = patch(&object, PLACEHOLDER, Some(51_234)).unwrap();
        assert_eq!(p.calls, 1);
        let b = p.bytes();
        assert_eq!(b.len(), object.len());
        assert_eq!(b[72..80], insn(CALL, 0x20, 51_234));
        // Everything else is unchanged: other helpers, the data copy.
        let mut expected = object.clone();
        expected[72..80].copy_from_slice(&insn(CALL, 0x20, 51_234));
        assert_eq!(b, &expected[..]);
        assert_eq!(b.as_ptr().align_offset(8), 0);
    }

    #[test]
    fn without_the_kfunc_the_call_yields_enosys() {
        let object = elf(&[insn(CALL, 0, PLACEHOLDER), insn(0x95, 0, 0)], &[]);
        let p = patch(&object, PLACEHOLDER, None).unwrap();
        assert_eq!(p.calls, 1);
        assert_eq!(p.bytes()[64..72], insn(MOV64_IMM, 0, -ENOSYS));
    }

    #[test]
    fn pseudo_calls_and_other_registers_are_not_placeholders() {
        // A bpf-to-bpf call (src_reg 1) with the same immediate is not ours.
        let object = elf(&[insn(CALL, 0x10, PLACEHOLDER), insn(CALL, 0x01, PLACEHOLDER)], &[]);
        assert_eq!(patch(&object, PLACEHOLDER, Some(7)).unwrap().calls, 0);
    }

    #[test]
    fn bad_objects_are_refused() {
        assert_eq!(patch(b"not an elf", PLACEHOLDER, None).err(), Some(KfuncError::NotElf64));
        let mut object = elf(&[insn(CALL, 0, PLACEHOLDER)], &[]);
        let shoff = object.len() - 3 * 64;
        // The executable section claims more bytes than the file has.
        object[shoff + 64 + 32..shoff + 64 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(patch(&object, PLACEHOLDER, None).err(), Some(KfuncError::Sections("section")));
        let mut object = elf(&[], &[]);
        object[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(patch(&object, PLACEHOLDER, None).is_err());
    }
}

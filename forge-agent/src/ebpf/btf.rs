//! A small reader for the kernel's BTF: byte offsets of struct members, so
//! the kernel programs can reach `bprm->file`, `file->f_path` and friends on
//! whatever kernel they are loaded into.

use std::{collections::HashMap, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("BTF header: {0}")]
    Header(String),
    #[error("BTF type record {index} at byte {offset}: {message}")]
    Type { index: u32, offset: usize, message: String },
    #[error("struct {0} not found in BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("{strukt}.{member} is a bitfield or not byte aligned (bit offset {bits})")]
    NotByteAligned { strukt: String, member: String, bits: u32 },
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    offset: u32,
}

#[derive(Clone, Debug)]
struct Type {
    name_off: u32,
    /// Size for structs/unions; referenced type id for typedef/modifiers.
    size_or_type: u32,
    kind: u32,
    kind_flag: bool,
    members: Vec<Member>,
}

/// Parsed BTF: types (id 1..) and the string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, Vec<u32>>,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl Btf {
    pub fn from_running_kernel() -> Result<Self, BtfError> {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        let bytes = std::fs::read(path)
            .map_err(|source| BtfError::Read { path: path.display().to_string(), source })?;
        Self::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let h = |m: &str| BtfError::Header(m.to_string());
        let magic = u16_at(bytes, 0).ok_or_else(|| h("truncated"))?;
        if magic != MAGIC {
            return Err(h(&format!("bad magic {magic:#x} (little-endian BTF expected)")));
        }
        let hdr_len = u32_at(bytes, 4).ok_or_else(|| h("truncated"))? as usize;
        let field = |i: usize| u32_at(bytes, 8 + 4 * i).map(|v| v as usize).ok_or_else(|| h("truncated"));
        let (type_off, type_len, str_off, str_len) = (field(0)?, field(1)?, field(2)?, field(3)?);
        let section = |off: usize, len: usize, what: &str| {
            let start = hdr_len.checked_add(off).ok_or_else(|| h(what))?;
            let end = start.checked_add(len).ok_or_else(|| h(what))?;
            bytes.get(start..end).ok_or_else(|| h(&format!("{what} section out of bounds")))
        };
        let types_raw = section(type_off, type_len, "type")?;
        let strings = section(str_off, str_len, "string")?.to_vec();

        let mut types = Vec::new();
        let mut off = 0usize;
        while off < types_raw.len() {
            let index = types.len() as u32 + 1;
            let bad = |message: &str| BtfError::Type { index, offset: off, message: message.to_string() };
            let name_off = u32_at(types_raw, off).ok_or_else(|| bad("truncated"))?;
            let info = u32_at(types_raw, off + 4).ok_or_else(|| bad("truncated"))?;
            let size_or_type = u32_at(types_raw, off + 8).ok_or_else(|| bad("truncated"))?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let base = off + 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                2 | 7..=12 | 16 | 18 => 0,
                other => return Err(bad(&format!("unknown kind {other}"))),
            };
            if base + extra > types_raw.len() {
                return Err(bad("truncated"));
            }
            let mut members = Vec::new();
            if kind == KIND_STRUCT || kind == KIND_UNION {
                for i in 0..vlen {
                    let m = base + 12 * i;
                    let get = |o: usize| u32_at(types_raw, m + o).ok_or_else(|| bad("truncated member"));
                    members.push(Member { name_off: get(0)?, type_id: get(4)?, offset: get(8)? });
                }
            }
            types.push(Type { name_off, size_or_type, kind, kind_flag, members });
            off = base + extra;
        }

        let mut btf = Self { types, strings, structs: HashMap::new() };
        for (i, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT
                && !t.members.is_empty()
                && let Some(name) = btf.name(t.name_off)
                && !name.is_empty()
            {
                btf.structs.entry(name.to_string()).or_default().push(i as u32 + 1);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> Option<&str> {
        let rest = self.strings.get(off as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        id.checked_sub(1).and_then(|i| self.types.get(i as usize))
    }

    /// Bit offset of `member` inside type `id`, descending into anonymous
    /// struct/union members.
    fn find_bits(&self, id: u32, member: &str, depth: u32) -> Option<(u32, bool)> {
        let t = self.ty(id)?;
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            let (bits, bitfield) =
                if t.kind_flag { (m.offset & 0x00ff_ffff, m.offset >> 24 != 0) } else { (m.offset, false) };
            let name = self.name(m.name_off).unwrap_or("");
            if name == member {
                return Some((bits, bitfield));
            }
            if name.is_empty() {
                let inner = self.skip_modifiers(m.type_id);
                if let Some(it) = self.ty(inner)
                    && (it.kind == KIND_STRUCT || it.kind == KIND_UNION)
                    && let Some((b, bf)) = self.find_bits(inner, member, depth + 1)
                {
                    return Some((bits + b, bf));
                }
            }
        }
        None
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying type.
    fn skip_modifiers(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.ty(id) {
                Some(t) if matches!(t.kind, 8..=11 | 18) => id = t.size_or_type,
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `member` in `struct struct_name`.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32, BtfError> {
        let ids = self.structs.get(struct_name).ok_or_else(|| BtfError::NoStruct(struct_name.to_string()))?;
        for &id in ids {
            if let Some((bits, bitfield)) = self.find_bits(id, member, 0) {
                if bitfield || bits % 8 != 0 {
                    return Err(BtfError::NotByteAligned {
                        strukt: struct_name.into(),
                        member: member.into(),
                        bits,
                    });
                }
                return Ok(bits / 8);
            }
        }
        Err(BtfError::NoMember { strukt: struct_name.into(), member: member.into() })
    }
}

/// Offsets the kernel programs need, read from the running kernel's BTF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    pub bprm_file: u32,
    pub file_f_path: u32,
    pub file_f_mode: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_exit_code: u32,
}

impl KernelOffsets {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        Ok(Self {
            bprm_file: btf.member_offset("linux_binprm", "file")?,
            file_f_path: btf.member_offset("file", "f_path")?,
            file_f_mode: btf.member_offset("file", "f_mode")?,
            task_tgid: btf.member_offset("task_struct", "tgid")?,
            task_real_parent: btf.member_offset("task_struct", "real_parent")?,
            task_exit_code: btf.member_offset("task_struct", "exit_code")?,
        })
    }

    pub fn globals(&self) -> [(&'static str, u32); 6] {
        [
            ("OFF_BPRM_FILE", self.bprm_file),
            ("OFF_FILE_F_PATH", self.file_f_path),
            ("OFF_FILE_F_MODE", self.file_f_mode),
            ("OFF_TASK_TGID", self.task_tgid),
            ("OFF_TASK_REAL_PARENT", self.task_real_parent),
            ("OFF_TASK_EXIT_CODE", self.task_exit_code),
        ]
    }
}

//! A small reader for the kernel's BTF: byte offsets of struct members, so
//! the kernel programs can reach `bprm->file`, `file->f_path` and friends on
//! whatever kernel they are loaded into.
//!
//! [`Btf::parse`] validates the header, walks every type record once (so a
//! wrong record size for any kind is caught as a bad record, not silently
//! misread) and indexes the names of structs that have members. Members are
//! only decoded when [`Btf::member_offset`] asks for them. Both little- and
//! big-endian blobs are accepted; the byte order comes from the magic.

use std::{
    collections::{HashMap, HashSet},
    fmt, io,
    ops::Range,
    path::{Path, PathBuf},
};

/// Where the running kernel exposes its own BTF.
const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const VERSION: u8 = 1;
/// `struct btf_header`: magic, version, flags, hdr_len, then four u32s.
const HEADER_LEN: usize = 24;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_LEN: usize = 12;
/// `struct btf_member`: name_off, type, offset.
const MEMBER_LEN: usize = 12;

/// How many unnamed struct/union members may nest before we call it corrupt.
const MAX_NESTING: u32 = 32;
/// How many typedef/const/volatile/restrict/type_tag links we follow.
const MAX_MODIFIERS: u32 = 64;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {source}", .path.display())]
    Invalid { path: PathBuf, source: Box<BtfError> },
    #[error("BTF blob is {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("bad BTF magic {found:#06x} (expected {MAGIC:#06x} in either byte order)")]
    BadMagic { found: u16 },
    #[error("unsupported BTF version {version} (expected {VERSION})")]
    BadVersion { version: u8 },
    #[error("BTF header length {hdr_len} is shorter than {HEADER_LEN} bytes")]
    BadHeaderLen { hdr_len: u32 },
    #[error(
        "BTF {section} section (offset {offset}, length {len}, after a {hdr_len}-byte header) \
         does not fit in the {blob_len}-byte blob"
    )]
    SectionOutOfBounds { section: &'static str, offset: u32, len: u32, hdr_len: u32, blob_len: usize },
    #[error("BTF string section at byte {offset} ({len} bytes) must start and end with NUL")]
    BadStrings { offset: usize, len: usize },
    #[error("BTF type {id} at byte {offset}: {reason}")]
    BadType { id: u32, offset: usize, reason: &'static str },
    #[error("BTF type {id} at byte {offset}: unknown kind {kind}")]
    UnknownKind { id: u32, offset: usize, kind: u32 },
    #[error("BTF type {id}: record at byte {offset} names string {name_off}, past the string section")]
    BadName { id: u32, offset: usize, name_off: u32 },
    #[error("struct {name} not found in BTF")]
    StructNotFound { name: String },
    #[error("struct {strukt} has no member {member}")]
    MemberNotFound { strukt: String, member: String },
    #[error("{strukt}.{member} is a bitfield or not byte aligned (bit offset {bit_offset})")]
    NotByteAligned { strukt: String, member: String, bit_offset: u32 },
    #[error(
        "struct {strukt} has several definitions that disagree on {member} (bit offsets {first} and {second})"
    )]
    Ambiguous { strukt: String, member: String, first: u32, second: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u32_at(self, bytes: &[u8], off: usize) -> Option<u32> {
        let raw: [u8; 4] = bytes.get(off..off.checked_add(4)?)?.try_into().ok()?;
        Some(match self {
            Self::Little => u32::from_le_bytes(raw),
            Self::Big => u32::from_be_bytes(raw),
        })
    }
}

/// The fixed 12-byte head of a type record.
#[derive(Clone, Copy, Debug)]
struct TypeHead {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    /// Size for INT/ENUM/STRUCT/UNION/FLOAT/DATASEC; a type id for the rest.
    size_or_type: u32,
}

impl TypeHead {
    /// Bytes of kind-specific data that follow the head; `None` for an unknown kind.
    fn trailing_len(&self) -> Option<usize> {
        Some(match self.kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * self.vlen,
            KIND_ENUM | KIND_FUNC_PROTO => 8 * self.vlen,
            KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC
            | KIND_FLOAT | KIND_TYPE_TAG => 0,
            _ => return None,
        })
    }

    fn is_composite(&self) -> bool {
        self.kind == KIND_STRUCT || self.kind == KIND_UNION
    }

    fn is_modifier(&self) -> bool {
        matches!(self.kind, KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG)
    }
}

/// A member located inside a struct, relative to the struct's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Found {
    bit_offset: u32,
    bitfield: bool,
    type_id: u32,
}

/// Parsed BTF: the raw blob, where each type record starts, and an index of
/// struct names.
pub struct Btf {
    data: Vec<u8>,
    endian: Endian,
    strings: Range<usize>,
    /// Byte offset in `data` of each type record; index `id - 1`.
    records: Vec<usize>,
    /// Struct name -> ids of STRUCT records with that name and at least one member.
    structs: HashMap<Box<[u8]>, Vec<u32>>,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("bytes", &self.data.len())
            .field("endian", &self.endian)
            .field("types", &self.records.len())
            .field("structs", &self.structs.len())
            .finish()
    }
}

impl Btf {
    /// Parses a raw BTF blob (as in `/sys/kernel/btf/vmlinux`).
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        Self::parse_owned(bytes.to_vec())
    }

    /// Reads and parses the running kernel's BTF.
    pub fn from_running_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    fn from_file(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read { path: path.to_owned(), source })?;
        let len = bytes.len();
        let btf = Self::parse_owned(bytes)
            .map_err(|e| BtfError::Invalid { path: path.to_owned(), source: Box::new(e) })?;
        tracing::debug!(
            path = %path.display(),
            bytes = len,
            types = btf.records.len(),
            structs = btf.structs.len(),
            "parsed BTF"
        );
        Ok(btf)
    }

    fn parse_owned(data: Vec<u8>) -> Result<Self, BtfError> {
        let header: &[u8; HEADER_LEN] = data
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(BtfError::TooShort { len: data.len() })?;
        let endian = match u16::from_le_bytes([header[0], header[1]]) {
            MAGIC => Endian::Little,
            found if found.swap_bytes() == MAGIC => Endian::Big,
            found => return Err(BtfError::BadMagic { found }),
        };
        if header[2] != VERSION {
            return Err(BtfError::BadVersion { version: header[2] });
        }
        let field = |off: usize| endian.u32_at(header, off).ok_or(BtfError::TooShort { len: data.len() });
        let hdr_len = field(4)?;
        if (hdr_len as usize) < HEADER_LEN {
            return Err(BtfError::BadHeaderLen { hdr_len });
        }
        let section = |section: &'static str, offset: u32, len: u32| {
            let start = (hdr_len as usize).checked_add(offset as usize);
            let end = start.and_then(|s| s.checked_add(len as usize)).filter(|&e| e <= data.len());
            match (start, end) {
                (Some(start), Some(end)) => Ok(start..end),
                _ => {
                    Err(BtfError::SectionOutOfBounds { section, offset, len, hdr_len, blob_len: data.len() })
                }
            }
        };
        let types = section("type", field(8)?, field(12)?)?;
        let strings = section("string", field(16)?, field(20)?)?;
        let str_bytes = data.get(strings.clone()).unwrap_or_default();
        if str_bytes.first() != Some(&0) || str_bytes.last() != Some(&0) {
            return Err(BtfError::BadStrings { offset: strings.start, len: strings.len() });
        }

        let mut records = Vec::new();
        let mut structs: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        let mut off = types.start;
        let mut id: u32 = 1;
        while off < types.end {
            let truncated = || BtfError::BadType { id, offset: off, reason: "truncated type record" };
            let head = read_head(endian, &data, off)
                .filter(|_| off + TYPE_LEN <= types.end)
                .ok_or_else(truncated)?;
            let trailing =
                head.trailing_len().ok_or(BtfError::UnknownKind { id, offset: off, kind: head.kind })?;
            let end = off + TYPE_LEN + trailing;
            if end > types.end {
                return Err(truncated());
            }
            let name = name_at(str_bytes, head.name_off).ok_or(BtfError::BadName {
                id,
                offset: off,
                name_off: head.name_off,
            })?;
            if head.kind == KIND_STRUCT && head.vlen > 0 && !name.is_empty() {
                match structs.get_mut(name) {
                    Some(ids) => ids.push(id),
                    None => {
                        structs.insert(name.into(), vec![id]);
                    }
                }
            }
            records.push(off);
            off = end;
            id += 1;
        }
        Ok(Self { data, endian, strings, records, structs })
    }

    /// Byte offset of `member` in `struct struct_name`, searching through
    /// anonymous struct/union members recursively (e.g. members that live
    /// inside an unnamed union).
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32, BtfError> {
        let (_, found) = self.find(struct_name, member)?;
        if found.bitfield || found.bit_offset % 8 != 0 {
            return Err(BtfError::NotByteAligned {
                strukt: struct_name.to_owned(),
                member: member.to_owned(),
                bit_offset: found.bit_offset,
            });
        }
        Ok(found.bit_offset / 8)
    }

    /// Locates `member` in every definition of `struct_name` that has members;
    /// the definitions that contain it must agree on where it is.
    fn find(&self, struct_name: &str, member: &str) -> Result<(u32, Found), BtfError> {
        let ids = self
            .structs
            .get(struct_name.as_bytes())
            .ok_or_else(|| BtfError::StructNotFound { name: struct_name.to_owned() })?;
        let mut result: Option<(u32, Found)> = None;
        for &id in ids {
            // Every indexed id was read by `parse`.
            let Some((rec, head)) = self.head(id) else { continue };
            let Some(found) = self.find_in(id, rec, head, member.as_bytes(), 0, &mut HashSet::new())? else {
                continue;
            };
            match result {
                None => result = Some((id, found)),
                Some((_, first))
                    if first.bit_offset == found.bit_offset && first.bitfield == found.bitfield => {}
                Some((_, first)) => {
                    return Err(BtfError::Ambiguous {
                        strukt: struct_name.to_owned(),
                        member: member.to_owned(),
                        first: first.bit_offset,
                        second: found.bit_offset,
                    });
                }
            }
        }
        result.ok_or_else(|| BtfError::MemberNotFound {
            strukt: struct_name.to_owned(),
            member: member.to_owned(),
        })
    }

    /// Searches the struct/union `id` for `member`, descending into unnamed
    /// struct/union members. `searched` holds the ids already searched in
    /// vain, which keeps corrupt (cyclic or heavily shared) type graphs linear.
    fn find_in(
        &self,
        id: u32,
        rec: usize,
        head: TypeHead,
        member: &[u8],
        depth: u32,
        searched: &mut HashSet<u32>,
    ) -> Result<Option<Found>, BtfError> {
        if depth > MAX_NESTING {
            return Err(BtfError::BadType { id, offset: rec, reason: "unnamed members nested too deeply" });
        }
        if !searched.insert(id) {
            return Ok(None);
        }
        for i in 0..head.vlen {
            let at = rec + TYPE_LEN + i * MEMBER_LEN;
            let bad = |reason| BtfError::BadType { id, offset: at, reason };
            let field = |o| self.endian.u32_at(&self.data, at + o).ok_or(bad("truncated member"));
            let (name_off, type_id, offset) = (field(0)?, field(4)?, field(8)?);
            let (bit_offset, bitfield_size) =
                if head.kind_flag { (offset & 0x00ff_ffff, offset >> 24) } else { (offset, 0) };
            let name = name_at(self.strings(), name_off).ok_or(bad("member name past the string section"))?;
            if !name.is_empty() {
                if name == member {
                    let bitfield =
                        bitfield_size != 0 || self.is_int_bitfield(type_id).ok_or(bad(BAD_MEMBER_TYPE))?;
                    return Ok(Some(Found { bit_offset, bitfield, type_id }));
                }
                continue;
            }
            let inner = self.skip_modifiers(type_id).ok_or(bad(BAD_MEMBER_TYPE))?;
            let (inner_rec, inner_head) = self.head(inner).ok_or(bad(BAD_MEMBER_TYPE))?;
            if !inner_head.is_composite() {
                continue;
            }
            if let Some(found) = self.find_in(inner, inner_rec, inner_head, member, depth + 1, searched)? {
                let bit_offset =
                    bit_offset.checked_add(found.bit_offset).ok_or(bad("member offset overflows"))?;
                return Ok(Some(Found { bit_offset, ..found }));
            }
        }
        Ok(None)
    }

    /// Whether `type_id` (through modifiers) is an INT narrower than its
    /// storage: the bitfield encoding of structs without `kind_flag`.
    fn is_int_bitfield(&self, type_id: u32) -> Option<bool> {
        let (rec, head) = self.head(self.skip_modifiers(type_id)?)?;
        if head.kind != KIND_INT {
            return Some(false);
        }
        let data = self.endian.u32_at(&self.data, rec + TYPE_LEN)?;
        let (bits, int_offset) = (data & 0xff, (data >> 16) & 0xff);
        Some(int_offset != 0 || u64::from(bits) != u64::from(head.size_or_type) * 8)
    }

    /// Follows typedef/const/volatile/restrict/type_tag links to the
    /// underlying type; `None` for a dangling id or a cycle.
    fn skip_modifiers(&self, mut id: u32) -> Option<u32> {
        for _ in 0..MAX_MODIFIERS {
            let (_, head) = self.head(id)?;
            if !head.is_modifier() {
                return Some(id);
            }
            id = head.size_or_type;
        }
        None
    }

    /// Record offset and head of type `id` (ids start at 1; 0 is void).
    fn head(&self, id: u32) -> Option<(usize, TypeHead)> {
        let rec = *self.records.get((id as usize).checked_sub(1)?)?;
        Some((rec, read_head(self.endian, &self.data, rec)?))
    }

    fn strings(&self) -> &[u8] {
        self.data.get(self.strings.clone()).unwrap_or_default()
    }
}

const BAD_MEMBER_TYPE: &str = "member type id is dangling or a modifier cycle";

fn read_head(endian: Endian, data: &[u8], off: usize) -> Option<TypeHead> {
    let info = endian.u32_at(data, off + 4)?;
    Some(TypeHead {
        name_off: endian.u32_at(data, off)?,
        kind: (info >> 24) & 0x1f,
        kind_flag: info >> 31 == 1,
        vlen: (info & 0xffff) as usize,
        size_or_type: endian.u32_at(data, off + 8)?,
    })
}

/// The NUL-terminated name at `off`; `None` if `off` is outside the section.
fn name_at(strings: &[u8], off: u32) -> Option<&[u8]> {
    let rest = strings.get(off as usize..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    rest.get(..end)
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
    /// `linux_binprm.file`, `file.f_path`, `file.f_mode`, `task_struct.tgid`,
    /// `task_struct.real_parent` and `task_struct.exit_code`.
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

    /// (global symbol name in the eBPF object, value) pairs.
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

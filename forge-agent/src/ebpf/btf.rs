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

    /// Whether `struct struct_name` has `member` (directly or in an unnamed
    /// struct/union member).
    pub fn has_member(&self, struct_name: &str, member: &str) -> bool {
        self.find(struct_name, member).is_ok()
    }

    /// The type id of the function `name` (a `FUNC` record), as the kernel
    /// knows it: what a call to that kernel function (a kfunc) names.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        let strings = self.strings();
        (1..=self.records.len() as u32).find(|&id| {
            self.head(id).is_some_and(|(_, head)| {
                head.kind == KIND_FUNC && name_at(strings, head.name_off) == Some(name.as_bytes())
            })
        })
    }

    /// How many parameters function `name` takes (its prototype's), if the
    /// kernel has it: where an LSM hook's return value sits in a BPF LSM
    /// program's context, since some hooks lost parameters across kernels.
    pub fn func_params(&self, name: &str) -> Option<u32> {
        let (_, func) = self.head(self.func_id(name)?)?;
        let (_, proto) = self.head(func.size_or_type)?;
        (proto.kind == KIND_FUNC_PROTO).then_some(proto.vlen as u32)
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
    pub bprm_filename: u32,
    pub file_f_path: u32,
    pub file_f_mode: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_exit_code: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub cgroup_level: u32,
    pub cgroup_root: u32,
    /// `cgroup.ancestors` (pointers, from 6.0) or `cgroup.ancestor_ids`.
    pub cgroup_ancestors: u32,
    /// Whether `cgroup_ancestors` is `ancestor_ids` (u64 ids).
    pub cgroup_ancestor_ids: bool,
    pub kn_id: u32,
    /// `kernfs_node.parent` (`__parent` from 6.15).
    pub kn_parent: u32,
    pub kn_priv: u32,
    pub kn_flags: u32,
    pub kn_name: u32,
    pub inode_sb: u32,
    pub inode_private: u32,
    pub sb_magic: u32,
    pub vfsmount_sb: u32,
    pub task_signal: u32,
    pub signal_live: u32,
    pub file_f_inode: u32,
    pub inode_ino: u32,
    pub inode_nlink: u32,
    pub sb_dev: u32,
    pub unix_sock_path: u32,
    pub socket_type: u32,
    pub msghdr_name: u32,
    pub msghdr_flags: u32,
    pub task_nsproxy: u32,
    pub nsproxy_mnt_ns: u32,
    /// `mnt_namespace.ns` + `ns_common.inum`.
    pub mnt_ns_inum: u32,
    pub proc_inode_vfs: u32,
    pub proc_inode_pid: u32,
    pub pid_tasks: u32,
    pub task_pid_links: u32,
    /// `task_struct.thread_info` + `thread_info.status` (x86: `TS_COMPAT`).
    pub task_ti_status: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_parent: u32,
    /// `dentry.d_name` + `qstr.name`.
    pub dentry_name: u32,
    /// `dentry.d_name` + `qstr.len`.
    pub dentry_name_len: u32,
    pub vfsmount_root: u32,
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub socket_sk: u32,
    /// `sock.__sk_common` + `sock_common.skc_family`.
    pub sk_family: u32,
    /// `sock.__sk_common` + `sock_common.skc_num` (the local port, host
    /// order; 0 until bound).
    pub sk_num: u32,
    /// `sock.__sk_common` + `sock_common.skc_rcv_saddr`.
    pub sk_rcv_saddr: u32,
    /// `sock.__sk_common` + `sock_common.skc_v6_rcv_saddr`.
    pub sk_v6_rcv_saddr: u32,
}

impl KernelOffsets {
    /// The members the kernel programs read: the exec and file paths, the
    /// task's process ids, its cgroup and the cgroup's ancestors, and the
    /// kernfs node, inode and super block of a cgroup or bpffs file.
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        let either = |strukt: &str, new: &str, old: &str| {
            if btf.has_member(strukt, new) {
                btf.member_offset(strukt, new)
            } else {
                btf.member_offset(strukt, old)
            }
        };
        let cgroup_ancestor_ids = !btf.has_member("cgroup", "ancestors");
        let sk_common = |member: &str| -> Result<u32, BtfError> {
            Ok(btf.member_offset("sock", "__sk_common")? + btf.member_offset("sock_common", member)?)
        };
        Ok(Self {
            bprm_file: btf.member_offset("linux_binprm", "file")?,
            bprm_filename: btf.member_offset("linux_binprm", "filename")?,
            file_f_path: btf.member_offset("file", "f_path")?,
            file_f_mode: btf.member_offset("file", "f_mode")?,
            file_f_inode: btf.member_offset("file", "f_inode")?,
            inode_ino: btf.member_offset("inode", "i_ino")?,
            inode_nlink: btf.member_offset("inode", "i_nlink")?,
            sb_dev: btf.member_offset("super_block", "s_dev")?,
            unix_sock_path: btf.member_offset("unix_sock", "path")?,
            socket_type: btf.member_offset("socket", "type")?,
            msghdr_name: btf.member_offset("msghdr", "msg_name")?,
            msghdr_flags: btf.member_offset("msghdr", "msg_flags")?,
            task_tgid: btf.member_offset("task_struct", "tgid")?,
            task_real_parent: btf.member_offset("task_struct", "real_parent")?,
            task_exit_code: btf.member_offset("task_struct", "exit_code")?,
            task_cgroups: btf.member_offset("task_struct", "cgroups")?,
            css_set_dfl_cgrp: btf.member_offset("css_set", "dfl_cgrp")?,
            cgroup_kn: btf.member_offset("cgroup", "kn")?,
            cgroup_level: btf.member_offset("cgroup", "level")?,
            cgroup_root: btf.member_offset("cgroup", "root")?,
            cgroup_ancestors: either("cgroup", "ancestors", "ancestor_ids")?,
            cgroup_ancestor_ids,
            kn_id: btf.member_offset("kernfs_node", "id")?,
            kn_parent: either("kernfs_node", "__parent", "parent")?,
            kn_priv: btf.member_offset("kernfs_node", "priv")?,
            kn_flags: btf.member_offset("kernfs_node", "flags")?,
            kn_name: btf.member_offset("kernfs_node", "name")?,
            inode_sb: btf.member_offset("inode", "i_sb")?,
            inode_private: btf.member_offset("inode", "i_private")?,
            sb_magic: btf.member_offset("super_block", "s_magic")?,
            vfsmount_sb: btf.member_offset("vfsmount", "mnt_sb")?,
            task_signal: btf.member_offset("task_struct", "signal")?,
            signal_live: btf.member_offset("signal_struct", "live")?,
            task_nsproxy: btf.member_offset("task_struct", "nsproxy")?,
            nsproxy_mnt_ns: btf.member_offset("nsproxy", "mnt_ns")?,
            mnt_ns_inum: btf.member_offset("mnt_namespace", "ns")?
                + btf.member_offset("ns_common", "inum")?,
            proc_inode_vfs: btf.member_offset("proc_inode", "vfs_inode")?,
            proc_inode_pid: btf.member_offset("proc_inode", "pid")?,
            pid_tasks: btf.member_offset("pid", "tasks")?,
            task_pid_links: btf.member_offset("task_struct", "pid_links")?,
            task_ti_status: btf.member_offset("task_struct", "thread_info")?
                + btf.member_offset("thread_info", "status")?,
            path_mnt: btf.member_offset("path", "mnt")?,
            path_dentry: btf.member_offset("path", "dentry")?,
            dentry_parent: btf.member_offset("dentry", "d_parent")?,
            dentry_name: btf.member_offset("dentry", "d_name")? + btf.member_offset("qstr", "name")?,
            dentry_name_len: btf.member_offset("dentry", "d_name")? + btf.member_offset("qstr", "len")?,
            vfsmount_root: btf.member_offset("vfsmount", "mnt_root")?,
            mount_mnt: btf.member_offset("mount", "mnt")?,
            mount_parent: btf.member_offset("mount", "mnt_parent")?,
            mount_mountpoint: btf.member_offset("mount", "mnt_mountpoint")?,
            socket_sk: btf.member_offset("socket", "sk")?,
            sk_family: sk_common("skc_family")?,
            sk_num: sk_common("skc_num")?,
            sk_rcv_saddr: sk_common("skc_rcv_saddr")?,
            sk_v6_rcv_saddr: sk_common("skc_v6_rcv_saddr")?,
        })
    }

    /// (global symbol name in the eBPF object, value) pairs.
    pub fn globals(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("OFF_BPRM_FILE", self.bprm_file),
            ("OFF_BPRM_FILENAME", self.bprm_filename),
            ("OFF_FILE_F_PATH", self.file_f_path),
            ("OFF_FILE_F_MODE", self.file_f_mode),
            ("OFF_TASK_TGID", self.task_tgid),
            ("OFF_TASK_REAL_PARENT", self.task_real_parent),
            ("OFF_TASK_EXIT_CODE", self.task_exit_code),
            ("OFF_TASK_CGROUPS", self.task_cgroups),
            ("OFF_CSS_SET_DFL_CGRP", self.css_set_dfl_cgrp),
            ("OFF_CGROUP_KN", self.cgroup_kn),
            ("OFF_CGROUP_LEVEL", self.cgroup_level),
            ("OFF_CGROUP_ROOT", self.cgroup_root),
            ("OFF_CGROUP_ANCESTORS", self.cgroup_ancestors),
            ("CGROUP_ANCESTOR_IDS", u32::from(self.cgroup_ancestor_ids)),
            ("OFF_KN_ID", self.kn_id),
            ("OFF_KN_PARENT", self.kn_parent),
            ("OFF_KN_PRIV", self.kn_priv),
            ("OFF_KN_FLAGS", self.kn_flags),
            ("OFF_KN_NAME", self.kn_name),
            ("OFF_INODE_SB", self.inode_sb),
            ("OFF_INODE_PRIVATE", self.inode_private),
            ("OFF_SB_MAGIC", self.sb_magic),
            ("OFF_VFSMOUNT_SB", self.vfsmount_sb),
            ("OFF_TASK_SIGNAL", self.task_signal),
            ("OFF_SIGNAL_LIVE", self.signal_live),
            ("OFF_TASK_NSPROXY", self.task_nsproxy),
            ("OFF_NSPROXY_MNT_NS", self.nsproxy_mnt_ns),
            ("OFF_MNT_NS_INUM", self.mnt_ns_inum),
            ("OFF_PROC_INODE_VFS", self.proc_inode_vfs),
            ("OFF_PROC_INODE_PID", self.proc_inode_pid),
            ("OFF_PID_TASKS", self.pid_tasks),
            ("OFF_TASK_PID_LINKS", self.task_pid_links),
            ("OFF_TASK_TI_STATUS", self.task_ti_status),
            ("OFF_PATH_MNT", self.path_mnt),
            ("OFF_PATH_DENTRY", self.path_dentry),
            ("OFF_DENTRY_PARENT", self.dentry_parent),
            ("OFF_DENTRY_NAME", self.dentry_name),
            ("OFF_DENTRY_NAME_LEN", self.dentry_name_len),
            ("OFF_VFSMOUNT_ROOT", self.vfsmount_root),
            ("OFF_MOUNT_MNT", self.mount_mnt),
            ("OFF_MOUNT_PARENT", self.mount_parent),
            ("OFF_MOUNT_MOUNTPOINT", self.mount_mountpoint),
            ("OFF_SOCKET_SK", self.socket_sk),
            ("OFF_SK_FAMILY", self.sk_family),
            ("OFF_SK_NUM", self.sk_num),
            ("OFF_SK_RCV_SADDR", self.sk_rcv_saddr),
            ("OFF_SK_V6_RCV_SADDR", self.sk_v6_rcv_saddr),
            ("OFF_FILE_F_INODE", self.file_f_inode),
            ("OFF_INODE_INO", self.inode_ino),
            ("OFF_INODE_NLINK", self.inode_nlink),
            ("OFF_SB_DEV", self.sb_dev),
            ("OFF_UNIX_SOCK_PATH", self.unix_sock_path),
            ("OFF_SOCKET_TYPE", self.socket_type),
            ("OFF_MSGHDR_NAME", self.msghdr_name),
            ("OFF_MSGHDR_FLAGS", self.msghdr_flags),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF blobs one type at a time; ids are handed out from 1 in order.
    struct Builder {
        endian: Endian,
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Self::with_endian(Endian::Little)
        }

        fn with_endian(endian: Endian) -> Self {
            Self { endian, types: Vec::new(), strings: vec![0], next_id: 1 }
        }

        fn put(&mut self, v: u32) {
            let bytes = match self.endian {
                Endian::Little => v.to_le_bytes(),
                Endian::Big => v.to_be_bytes(),
            };
            self.types.extend_from_slice(&bytes);
        }

        fn name(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn record(&mut self, name: &str, kind: u32, kind_flag: bool, vlen: u32, size_or_type: u32) -> u32 {
            let name_off = self.name(name);
            self.raw_record(name_off, kind, kind_flag, vlen, size_or_type)
        }

        fn raw_record(
            &mut self,
            name_off: u32,
            kind: u32,
            kind_flag: bool,
            vlen: u32,
            size_or_type: u32,
        ) -> u32 {
            self.put(name_off);
            self.put(u32::from(kind_flag) << 31 | kind << 24 | vlen);
            self.put(size_or_type);
            self.next_id += 1;
            self.next_id - 1
        }

        /// An INT of `size` bytes using `bits` bits starting at bit `offset`.
        fn int_bits(&mut self, name: &str, size: u32, offset: u32, bits: u32) -> u32 {
            let id = self.record(name, KIND_INT, false, 0, size);
            self.put(1 << 24 | offset << 16 | bits); // encoding: signed
            id
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            self.int_bits(name, size, 0, size * 8)
        }

        fn link(&mut self, kind: u32, name: &str, target: u32) -> u32 {
            self.record(name, kind, false, 0, target)
        }

        /// An array of `len` elements of type `elem` (index type: `elem`).
        fn array(&mut self, elem: u32, len: u32) -> u32 {
            let id = self.record("", KIND_ARRAY, false, 0, 0);
            for v in [elem, elem, len] {
                self.put(v);
            }
            id
        }

        /// `members`: (name, type id, offset word as stored).
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.record(name, kind, kind_flag, members.len() as u32, size);
            for &(member, type_id, offset) in members {
                let name_off = self.name(member);
                self.put(name_off);
                self.put(type_id);
                self.put(offset);
            }
            id
        }

        /// A plain struct; member offsets are given in bytes.
        fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let bits: Vec<_> = members.iter().map(|&(n, t, o)| (n, t, o * 8)).collect();
            self.composite(KIND_STRUCT, name, size, false, &bits)
        }

        /// A plain union; every member at offset 0.
        fn union(&mut self, name: &str, size: u32, members: &[(&str, u32)]) -> u32 {
            let members: Vec<_> = members.iter().map(|&(n, t)| (n, t, 0)).collect();
            self.composite(KIND_UNION, name, size, false, &members)
        }

        fn build(&self) -> Vec<u8> {
            let word = |v: u32| match self.endian {
                Endian::Little => v.to_le_bytes(),
                Endian::Big => v.to_be_bytes(),
            };
            let magic = match self.endian {
                Endian::Little => MAGIC.to_le_bytes(),
                Endian::Big => MAGIC.to_be_bytes(),
            };
            let mut out = Vec::new();
            out.extend_from_slice(&magic);
            out.extend_from_slice(&[VERSION, 0]);
            let type_len = self.types.len() as u32;
            for v in [HEADER_LEN as u32, 0, type_len, type_len, self.strings.len() as u32] {
                out.extend_from_slice(&word(v));
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// One record of every kind, then `struct target` whose members use them.
    /// Returns the builder and the kind of each id in order.
    fn every_kind() -> (Builder, Vec<u32>) {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let long = b.int("long", 8);
        let ptr = b.link(KIND_PTR, "", long);
        let arr = b.record("", KIND_ARRAY, false, 0, 0);
        for v in [int, int, 16] {
            b.put(v); // element type, index type, nelems
        }
        let color = b.record("color", KIND_ENUM, false, 2, 4);
        for (name, value) in [("RED", 0), ("GREEN", 1)] {
            let n = b.name(name);
            b.put(n);
            b.put(value);
        }
        let wide = b.record("wide", KIND_ENUM64, false, 2, 8);
        for (name, value) in [("BIG", 1u64 << 40), ("SMALL", 2)] {
            let n = b.name(name);
            b.put(n);
            b.put(value as u32);
            b.put((value >> 32) as u32);
        }
        b.record("file", KIND_FWD, false, 0, 0);
        let pid_t = b.link(KIND_TYPEDEF, "pid_t", int);
        let vol = b.link(KIND_VOLATILE, "", int);
        let cnst = b.link(KIND_CONST, "", pid_t);
        let restrict = b.link(KIND_RESTRICT, "", ptr);
        let proto = b.record("", KIND_FUNC_PROTO, false, 2, int);
        for (name, ty) in [("a", int), ("b", ptr)] {
            let n = b.name(name);
            b.put(n);
            b.put(ty);
        }
        b.record("do_it", KIND_FUNC, false, 1, proto);
        let var = b.record("counter", KIND_VAR, false, 0, int);
        b.put(1); // linkage: global
        b.record(".data", KIND_DATASEC, false, 2, 16);
        for (ty, off, size) in [(var, 0, 4), (var, 8, 4)] {
            b.put(ty);
            b.put(off);
            b.put(size);
        }
        let double = b.record("double", KIND_FLOAT, false, 0, 8);
        b.record("user", KIND_DECL_TAG, false, 0, var);
        b.put(u32::MAX); // component_idx -1: the whole variable
        let rcu = b.link(KIND_TYPE_TAG, "rcu", ptr);
        let un = b.union("", 8, &[("as_int", int), ("as_long", long)]);
        b.strukt(
            "target",
            128,
            &[
                ("pid", cnst, 0),
                ("flags", vol, 4),
                ("parent", rcu, 8),
                ("slots", arr, 16),
                ("hue", color, 80),
                ("big", wide, 88),
                ("scale", double, 96),
                ("raw", restrict, 104),
                ("", un, 112),
                ("last", int, 120),
            ],
        );
        let kinds = vec![
            KIND_INT,
            KIND_INT,
            KIND_PTR,
            KIND_ARRAY,
            KIND_ENUM,
            KIND_ENUM64,
            KIND_FWD,
            KIND_TYPEDEF,
            KIND_VOLATILE,
            KIND_CONST,
            KIND_RESTRICT,
            KIND_FUNC_PROTO,
            KIND_FUNC,
            KIND_VAR,
            KIND_DATASEC,
            KIND_FLOAT,
            KIND_DECL_TAG,
            KIND_TYPE_TAG,
            KIND_UNION,
            KIND_STRUCT,
        ];
        (b, kinds)
    }

    /// The six structs the agent needs, laid out like a (made up) kernel.
    fn kernel_like() -> Builder {
        kernel_of(Generation::Current)
    }

    /// Layouts that differ between the kernels the agent supports.
    #[derive(Clone, Copy, PartialEq)]
    enum Generation {
        /// 5.10: `cgroup.ancestor_ids[]`, `kernfs_node.parent`.
        Old,
        /// 6.15 on: `cgroup.ancestors[]` (in a union), `kernfs_node.__parent`.
        Current,
    }

    fn kernel_of(generation: Generation) -> Builder {
        let mut b = Builder::new();
        let void_ptr0 = b.link(KIND_PTR, "", 0);
        let int = b.int("int", 4);
        let uint = b.int_bits("unsigned int", 4, 0, 32);
        let pid_t = b.link(KIND_TYPEDEF, "pid_t", int);
        let fmode_t = b.link(KIND_TYPEDEF, "fmode_t", uint);
        let file_fwd = b.record("file", KIND_FWD, false, 0, 0);
        let file_ptr = b.link(KIND_PTR, "", file_fwd);
        let task_ptr = b.link(KIND_PTR, "", b.next_id + 1);
        b.strukt(
            "task_struct",
            64,
            &[("exit_code", int, 8), ("pid", pid_t, 12), ("tgid", pid_t, 16), ("real_parent", task_ptr, 24)],
        );
        let path = b.strukt("path", 16, &[("mnt", task_ptr, 0), ("dentry", task_ptr, 8)]);
        let cpath = b.link(KIND_CONST, "", path);
        let path_union = b.union("", 16, &[("f_path", cpath), ("__f_path", path)]);
        b.strukt(
            "file",
            48,
            &[
                ("f_lock", int, 0),
                ("f_mode", fmode_t, 4),
                ("", path_union, 16),
                ("f_pos", int, 32),
                ("f_inode", void_ptr0, 40),
            ],
        );
        b.strukt("linux_binprm", 40, &[("buf", int, 0), ("file", file_ptr, 24), ("filename", void_ptr0, 32)]);
        let u64_t = b.int_bits("u64", 8, 0, 64);
        let ushort = b.int_bits("unsigned short", 2, 0, 16);
        let void_ptr = b.link(KIND_PTR, "", 0);
        b.strukt("css_set", 64, &[("refcount", int, 0), ("dfl_cgrp", void_ptr, 40)]);
        b.strukt("cgroup_root", 16, &[("hierarchy_id", int, 0)]);
        let parent = if generation == Generation::Old { "parent" } else { "__parent" };
        b.strukt(
            "kernfs_node",
            128,
            &[
                ("count", int, 0),
                (parent, void_ptr, 8),
                ("name", void_ptr, 16),
                ("priv", void_ptr, 88),
                ("id", u64_t, 96),
                ("flags", ushort, 104),
            ],
        );
        let tail = if generation == Generation::Old {
            let arr = b.array(u64_t, 0);
            b.strukt("", 8, &[("ancestor_ids", arr, 0)])
        } else {
            let arr = b.array(void_ptr, 0);
            b.union("", 8, &[("ancestors", arr), ("_root_ancestor", void_ptr)])
        };
        b.strukt(
            "cgroup",
            256,
            &[
                ("self", int, 0),
                ("level", int, 200),
                ("kn", void_ptr, 208),
                ("root", void_ptr, 216),
                ("", tail, 248),
            ],
        );
        b.strukt("super_block", 128, &[("s_dev", int, 16), ("s_magic", u64_t, 96)]);
        let nlink_union = b.union("", 4, &[("i_nlink", uint), ("__i_nlink", uint)]);
        b.strukt(
            "inode",
            128,
            &[
                ("i_mode", ushort, 0),
                ("i_sb", void_ptr, 40),
                ("i_ino", u64_t, 64),
                ("", nlink_union, 72),
                ("i_private", void_ptr, 120),
            ],
        );
        b.strukt("vfsmount", 24, &[("mnt_root", void_ptr, 0), ("mnt_sb", void_ptr, 8)]);
        b.strukt("unix_sock", 32, &[("sk", int, 0), ("path", path, 8)]);
        b.strukt("msghdr", 64, &[("msg_name", void_ptr, 0), ("msg_flags", uint, 48)]);
        // qstr: { union { struct { u32 hash; u32 len; }; u64 hash_len; }; name }
        let hash_len = b.strukt("", 8, &[("hash", uint, 0), ("len", uint, 4)]);
        let hash_union = b.union("", 8, &[("", hash_len), ("hash_len", u64_t)]);
        let qstr = b.strukt("qstr", 16, &[("", hash_union, 0), ("name", void_ptr, 8)]);
        b.strukt("dentry", 192, &[("d_flags", uint, 0), ("d_parent", void_ptr, 24), ("d_name", qstr, 32)]);
        let vfsmount_t = b.strukt("", 8, &[("mnt_root", void_ptr, 0)]);
        b.strukt(
            "mount",
            128,
            &[
                ("mnt_hash", void_ptr, 0),
                ("mnt_parent", void_ptr, 16),
                ("mnt_mountpoint", void_ptr, 24),
                ("mnt", vfsmount_t, 32),
            ],
        );
        // sock_common: { union { u64 skc_addrpair; struct { u32 skc_daddr; u32
        // skc_rcv_saddr; }; }; union { u32 skc_hash; ... }; union { u32
        // skc_portpair; struct { u16 skc_dport; u16 skc_num; }; }; u16
        // skc_family; ... skc_v6_rcv_saddr at 56 }, inside sock at 0.
        let addrs = b.strukt("", 8, &[("skc_daddr", uint, 0), ("skc_rcv_saddr", uint, 4)]);
        let addr_union = b.union("", 8, &[("skc_addrpair", u64_t), ("", addrs)]);
        let ports = b.strukt("", 4, &[("skc_dport", ushort, 0), ("skc_num", ushort, 2)]);
        let port_union = b.union("", 4, &[("skc_portpair", uint), ("", ports)]);
        let v6 = b.array(uint, 4);
        let common = b.strukt(
            "sock_common",
            136,
            &[
                ("", addr_union, 0),
                ("skc_hash", uint, 8),
                ("", port_union, 12),
                ("skc_family", ushort, 16),
                ("skc_v6_rcv_saddr", v6, 56),
            ],
        );
        b.strukt("sock", 512, &[("__sk_common", common, 0)]);
        b.strukt("socket", 64, &[("state", int, 0), ("type", ushort, 4), ("sk", void_ptr, 32)]);
        let thread_info = b.strukt(
            "thread_info",
            24,
            &[("flags", u64_t, 0), ("syscall_work", u64_t, 8), ("status", uint, 16)],
        );
        // task_struct.cgroups and friends, as a later definition of the same
        // struct (every definition with members must agree).
        b.strukt(
            "task_struct",
            64,
            &[
                ("tgid", pid_t, 16),
                ("cgroups", void_ptr, 56),
                ("signal", void_ptr, 32),
                ("nsproxy", void_ptr, 40),
                ("pid_links", void_ptr, 48),
                ("thread_info", thread_info, 0),
            ],
        );
        b.strukt("signal_struct", 64, &[("sigcnt", int, 0), ("live", int, 4)]);
        b.strukt("nsproxy", 48, &[("count", int, 0), ("uts_ns", void_ptr, 8), ("mnt_ns", void_ptr, 24)]);
        let ns_common =
            b.strukt("ns_common", 24, &[("stashed", void_ptr, 0), ("ops", void_ptr, 8), ("inum", int, 16)]);
        b.strukt("mnt_namespace", 64, &[("ns", ns_common, 8)]);
        b.strukt("proc_inode", 256, &[("pid", void_ptr, 0), ("fd", int, 8), ("vfs_inode", int, 96)]);
        b.strukt("pid", 64, &[("count", int, 0), ("tasks", void_ptr, 16)]);
        let proto = b.record("", KIND_FUNC_PROTO, false, 0, int);
        b.record("bpf_send_signal_task", KIND_FUNC, false, 0, proto);
        b
    }

    fn parse(b: &Builder) -> Btf {
        Btf::parse(&b.build()).expect("valid synthetic BTF")
    }

    #[test]
    fn finds_plain_members() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let ptr = b.link(KIND_PTR, "", int);
        b.strukt("pair", 16, &[("a", int, 0), ("b", ptr, 8)]);
        let btf = parse(&b);
        assert_eq!(btf.member_offset("pair", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("pair", "b").unwrap(), 8);
        assert!(matches!(
            btf.member_offset("pair", "c"),
            Err(BtfError::MemberNotFound { strukt, member }) if strukt == "pair" && member == "c"
        ));
        assert!(matches!(btf.member_offset("pair", ""), Err(BtfError::MemberNotFound { .. })));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::StructNotFound { name }) if name == "nope"
        ));
    }

    #[test]
    fn skips_every_kind_by_its_trailing_size() {
        let (b, kinds) = every_kind();
        let btf = parse(&b);
        let parsed: Vec<u32> =
            (1..=btf.records.len() as u32).map(|id| btf.head(id).unwrap().1.kind).collect();
        assert_eq!(parsed, kinds);
        let expect = [
            ("pid", 0),
            ("flags", 4),
            ("parent", 8),
            ("slots", 16),
            ("hue", 80),
            ("big", 88),
            ("scale", 96),
            ("raw", 104),
            ("as_int", 112),
            ("as_long", 112),
            ("last", 120),
        ];
        for (member, offset) in expect {
            assert_eq!(btf.member_offset("target", member).unwrap(), offset, "target.{member}");
        }
        assert_eq!(btf.func_params("do_it"), Some(2));
        assert_eq!(btf.func_params("undone"), None);
        assert_eq!(btf.func_params("counter"), None, "a variable is no function");
    }

    #[test]
    fn descends_into_nested_unnamed_unions_and_structs() {
        // struct outer { int a; union { struct { int x; int y; }; struct { long z; }; }; int after; };
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let long = b.int("long", 8);
        let xy = b.strukt("", 8, &[("x", int, 0), ("y", int, 4)]);
        let z = b.strukt("", 8, &[("z", long, 0)]);
        let un = b.union("", 8, &[("", xy), ("", z)]);
        b.strukt("outer", 24, &[("a", int, 0), ("", un, 8), ("after", int, 16)]);
        let btf = parse(&b);
        let got: Vec<u32> =
            ["a", "x", "y", "z", "after"].iter().map(|m| btf.member_offset("outer", m).unwrap()).collect();
        assert_eq!(got, [0, 8, 12, 8, 16]);
        // Unnamed members are not structs one can name.
        assert!(matches!(btf.member_offset("", "x"), Err(BtfError::StructNotFound { .. })));
    }

    #[test]
    fn follows_typedef_and_const_member_types() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let inner = b.union("", 8, &[("word", int)]);
        let td = b.link(KIND_TYPEDEF, "inner_t", inner);
        let cnst = b.link(KIND_CONST, "", td);
        let vol = b.link(KIND_VOLATILE, "", cnst);
        let pid_t = b.link(KIND_TYPEDEF, "pid_t", int);
        let cpid = b.link(KIND_CONST, "", pid_t);
        b.strukt("holder", 24, &[("pid", cpid, 4), ("", vol, 8)]);
        let btf = parse(&b);
        assert_eq!(btf.member_offset("holder", "pid").unwrap(), 4);
        assert_eq!(btf.member_offset("holder", "word").unwrap(), 8);
    }

    #[test]
    fn rejects_bitfields() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let three_bits = b.int_bits("int", 4, 0, 3);
        let shifted = b.int_bits("int", 4, 8, 8);
        // kind_flag: offset word = bitfield_size << 24 | bit_offset.
        b.composite(
            KIND_STRUCT,
            "flagged",
            16,
            true,
            &[("bf", int, 3 << 24 | 8), ("plain", int, 64), ("odd", int, 68)],
        );
        // No kind_flag: bitfields show as narrow INTs or unaligned offsets.
        b.strukt("legacy", 16, &[("narrow", three_bits, 0), ("shifted", shifted, 4), ("whole", int, 8)]);
        b.composite(KIND_STRUCT, "unaligned", 8, false, &[("u", int, 12)]);
        let btf = parse(&b);
        let not_aligned = |s: &str, m: &str, bits: u32| {
            matches!(
                btf.member_offset(s, m),
                Err(BtfError::NotByteAligned { strukt, member, bit_offset })
                    if strukt == s && member == m && bit_offset == bits
            )
        };
        assert!(not_aligned("flagged", "bf", 8));
        assert!(not_aligned("flagged", "odd", 68));
        assert_eq!(btf.member_offset("flagged", "plain").unwrap(), 8);
        assert!(not_aligned("legacy", "narrow", 0));
        assert!(not_aligned("legacy", "shifted", 32));
        assert_eq!(btf.member_offset("legacy", "whole").unwrap(), 8);
        assert!(not_aligned("unaligned", "u", 12));
    }

    #[test]
    fn picks_the_struct_with_members() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.record("file", KIND_FWD, false, 0, 0);
        b.record("file", KIND_STRUCT, false, 0, 0); // declaration only
        b.union("file", 8, &[("f_mode", int)]);
        b.strukt("file", 16, &[("f_lock", int, 0), ("f_mode", int, 4)]);
        b.record("only_fwd", KIND_FWD, false, 0, 0);
        b.union("only_union", 4, &[("x", int)]);
        let btf = parse(&b);
        assert_eq!(btf.member_offset("file", "f_mode").unwrap(), 4);
        assert!(matches!(btf.member_offset("only_fwd", "x"), Err(BtfError::StructNotFound { .. })));
        assert!(matches!(btf.member_offset("only_union", "x"), Err(BtfError::StructNotFound { .. })));
    }

    #[test]
    fn duplicate_definitions_must_agree() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.strukt("dup", 8, &[("a", int, 0), ("b", int, 4)]);
        b.strukt("dup", 8, &[("a", int, 0), ("b", int, 4)]);
        b.strukt("dup", 12, &[("a", int, 0), ("c", int, 8)]);
        b.strukt("clash", 8, &[("a", int, 0)]);
        b.strukt("clash", 8, &[("a", int, 4)]);
        let btf = parse(&b);
        assert_eq!(btf.member_offset("dup", "b").unwrap(), 4);
        assert_eq!(btf.member_offset("dup", "c").unwrap(), 8);
        assert!(matches!(
            btf.member_offset("clash", "a"),
            Err(BtfError::Ambiguous { first: 0, second: 32, .. })
        ));
    }

    #[test]
    fn cyclic_and_deep_unnamed_members_terminate() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let self_id = b.next_id;
        b.strukt("loop", 8, &[("", self_id, 0), ("x", int, 4)]);
        // typedef a -> typedef b -> typedef a, used as an unnamed member.
        let td_a = b.next_id;
        b.link(KIND_TYPEDEF, "a", td_a + 1);
        b.link(KIND_TYPEDEF, "b", td_a);
        b.strukt("modloop", 8, &[("", td_a, 0), ("x", int, 4)]);
        b.strukt("dangling", 8, &[("", 9999, 0), ("x", int, 4)]);
        // 40 unnamed structs, each the first member of the next.
        let mut inner = b.strukt("", 4, &[("deep", int, 0)]);
        for depth in 1..=40 {
            inner = b.strukt("", 4, &[("", inner, 0)]);
            if depth == 10 {
                b.strukt("ten", 4, &[("", inner, 0)]);
            }
        }
        b.strukt("forty", 4, &[("", inner, 0)]);
        let btf = parse(&b);
        assert_eq!(btf.member_offset("loop", "x").unwrap(), 4);
        assert!(matches!(btf.member_offset("loop", "y"), Err(BtfError::MemberNotFound { .. })));
        assert!(matches!(btf.member_offset("modloop", "x"), Err(BtfError::BadType { .. })));
        assert!(matches!(btf.member_offset("dangling", "x"), Err(BtfError::BadType { .. })));
        assert_eq!(btf.member_offset("ten", "deep").unwrap(), 0);
        assert!(matches!(btf.member_offset("forty", "deep"), Err(BtfError::BadType { .. })));
    }

    #[test]
    fn big_endian_blobs_parse_the_same() {
        for endian in [Endian::Little, Endian::Big] {
            let mut b = Builder::with_endian(endian);
            let int = b.int("int", 4);
            let un = b.union("", 4, &[("inner", int)]);
            b.strukt("s", 12, &[("a", int, 0), ("", un, 4), ("c", int, 8)]);
            let btf = parse(&b);
            assert_eq!(btf.endian, endian);
            assert_eq!(btf.member_offset("s", "inner").unwrap(), 4);
            assert_eq!(btf.member_offset("s", "c").unwrap(), 8);
        }
    }

    #[test]
    fn kernel_offsets_and_globals() {
        let btf = parse(&kernel_like());
        let offsets = KernelOffsets::from_btf(&btf).unwrap();
        assert_eq!(
            offsets,
            KernelOffsets {
                bprm_file: 24,
                bprm_filename: 32,
                file_f_path: 16,
                file_f_mode: 4,
                task_tgid: 16,
                task_real_parent: 24,
                task_exit_code: 8,
                task_cgroups: 56,
                css_set_dfl_cgrp: 40,
                cgroup_kn: 208,
                cgroup_level: 200,
                cgroup_root: 216,
                cgroup_ancestors: 248,
                cgroup_ancestor_ids: false,
                kn_id: 96,
                kn_parent: 8,
                kn_priv: 88,
                kn_flags: 104,
                kn_name: 16,
                inode_sb: 40,
                inode_private: 120,
                sb_magic: 96,
                vfsmount_sb: 8,
                task_signal: 32,
                signal_live: 4,
                file_f_inode: 40,
                inode_ino: 64,
                inode_nlink: 72,
                sb_dev: 16,
                unix_sock_path: 8,
                socket_type: 4,
                msghdr_name: 0,
                msghdr_flags: 48,
                task_nsproxy: 40,
                nsproxy_mnt_ns: 24,
                mnt_ns_inum: 8 + 16,
                proc_inode_vfs: 96,
                proc_inode_pid: 0,
                pid_tasks: 16,
                task_pid_links: 48,
                task_ti_status: 16,
                path_mnt: 0,
                path_dentry: 8,
                dentry_parent: 24,
                dentry_name: 32 + 8,
                dentry_name_len: 32 + 4,
                vfsmount_root: 0,
                mount_mnt: 32,
                mount_parent: 16,
                mount_mountpoint: 24,
                socket_sk: 32,
                sk_family: 16,
                sk_num: 14,
                sk_rcv_saddr: 4,
                sk_v6_rcv_saddr: 56,
            }
        );
        let globals = offsets.globals();
        assert_eq!(
            globals[..7],
            [
                ("OFF_BPRM_FILE", 24),
                ("OFF_BPRM_FILENAME", 32),
                ("OFF_FILE_F_PATH", 16),
                ("OFF_FILE_F_MODE", 4),
                ("OFF_TASK_TGID", 16),
                ("OFF_TASK_REAL_PARENT", 24),
                ("OFF_TASK_EXIT_CODE", 8),
            ]
        );
        assert!(globals.contains(&("CGROUP_ANCESTOR_IDS", 0)));
        assert!(globals.contains(&("OFF_CGROUP_ANCESTORS", 248)));
        assert!(globals.contains(&("OFF_INODE_INO", 64)) && globals.contains(&("OFF_SB_DEV", 16)));
        // Every global names a distinct symbol.
        let names: HashSet<_> = globals.iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), globals.len());
    }

    #[test]
    fn older_kernels_use_ancestor_ids_and_parent() {
        let btf = parse(&kernel_of(Generation::Old));
        let offsets = KernelOffsets::from_btf(&btf).unwrap();
        assert!(offsets.cgroup_ancestor_ids);
        assert_eq!((offsets.cgroup_ancestors, offsets.kn_parent), (248, 8));
        assert!(offsets.globals().contains(&("CGROUP_ANCESTOR_IDS", 1)));
    }

    #[test]
    fn kfuncs_are_found_by_name() {
        let btf = parse(&kernel_like());
        let id = btf.func_id("bpf_send_signal_task").expect("declared");
        assert_eq!(btf.head(id).map(|(_, h)| h.kind), Some(KIND_FUNC));
        assert_eq!(btf.func_id("bpf_no_such_kfunc"), None);
        // A struct of that name is not a function.
        assert_eq!(btf.func_id("file"), None);
    }

    #[test]
    fn missing_kernel_struct_is_reported_by_name() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.strukt("task_struct", 8, &[("tgid", int, 0)]);
        let err = KernelOffsets::from_btf(&parse(&b)).unwrap_err();
        assert!(matches!(&err, BtfError::StructNotFound { name } if name == "linux_binprm"), "{err}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let blob = every_kind().0.build();
        for len in 0..blob.len() {
            assert!(Btf::parse(&blob[..len]).is_err(), "truncated to {len} of {} bytes", blob.len());
        }
        assert!(Btf::parse(&blob).is_ok());
    }

    /// Rewrites a blob's header so the type section is cut to `type_len`.
    fn with_type_len(b: &Builder, type_len: usize) -> Vec<u8> {
        let mut cut = Builder::with_endian(b.endian);
        cut.types = b.types[..type_len].to_vec();
        cut.strings = b.strings.clone();
        cut.build()
    }

    #[test]
    fn a_cut_type_section_is_a_bad_record() {
        let (b, kinds) = every_kind();
        let btf = parse(&b);
        let starts: Vec<usize> = btf.records.iter().map(|r| r - HEADER_LEN).collect();
        for type_len in 0..b.types.len() {
            match Btf::parse(&with_type_len(&b, type_len)) {
                Ok(cut) => {
                    let whole = starts.iter().filter(|&&s| s < type_len).count();
                    assert!(starts.contains(&type_len), "cut at {type_len} parsed");
                    assert_eq!(cut.records.len(), whole);
                }
                Err(BtfError::BadType { id, offset, reason: "truncated type record" }) => {
                    let at = starts.iter().rposition(|&s| s < type_len).unwrap();
                    assert_eq!((id as usize, offset), (at + 1, starts[at] + HEADER_LEN), "cut at {type_len}");
                }
                Err(e) => panic!("cut at {type_len}: unexpected {e}"),
            }
        }
        assert_eq!(starts.len(), kinds.len());
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        let blob = kernel_like().build();
        let members = [
            ("linux_binprm", "file"),
            ("file", "f_path"),
            ("file", "f_mode"),
            ("task_struct", "tgid"),
            ("path", "x"),
        ];
        for i in 0..blob.len() {
            for v in [0x00, 0x01, 0x08, 0x7f, 0x80, 0xff] {
                let mut bad = blob.clone();
                bad[i] = v;
                if let Ok(btf) = Btf::parse(&bad) {
                    for (s, m) in members {
                        let _ = btf.member_offset(s, m);
                    }
                    let _ = KernelOffsets::from_btf(&btf);
                }
            }
        }
    }

    #[test]
    fn header_errors() {
        let good = kernel_like().build();
        let patch = |at: usize, bytes: &[u8]| {
            let mut b = good.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            Btf::parse(&b).unwrap_err()
        };
        assert!(matches!(Btf::parse(&[]), Err(BtfError::TooShort { len: 0 })));
        assert!(matches!(patch(0, &[0x12, 0x34]), BtfError::BadMagic { found: 0x3412 }));
        assert!(matches!(patch(2, &[2]), BtfError::BadVersion { version: 2 }));
        assert!(matches!(patch(4, &8u32.to_le_bytes()), BtfError::BadHeaderLen { hdr_len: 8 }));
        assert!(matches!(
            patch(8, &u32::MAX.to_le_bytes()),
            BtfError::SectionOutOfBounds { section: "type", offset: u32::MAX, .. }
        ));
        assert!(matches!(
            patch(20, &u32::MAX.to_le_bytes()),
            BtfError::SectionOutOfBounds { section: "string", len: u32::MAX, .. }
        ));
        // A longer header (as newer kernels may emit) shifts both sections.
        let mut longer = good[..HEADER_LEN].to_vec();
        longer[4..8].copy_from_slice(&(HEADER_LEN as u32 + 8).to_le_bytes());
        longer.extend_from_slice(&[0; 8]);
        longer.extend_from_slice(&good[HEADER_LEN..]);
        assert_eq!(Btf::parse(&longer).unwrap().member_offset("file", "f_mode").unwrap(), 4);
    }

    #[test]
    fn bad_strings_and_names() {
        let b = kernel_like();
        let mut no_leading_nul = b.clone_with(|c| c.strings[0] = b'x');
        assert!(matches!(Btf::parse(&no_leading_nul), Err(BtfError::BadStrings { .. })));
        no_leading_nul = b.clone_with(|c| *c.strings.last_mut().unwrap() = b'x');
        assert!(matches!(Btf::parse(&no_leading_nul), Err(BtfError::BadStrings { .. })));

        let mut b = Builder::new();
        b.int("int", 4);
        b.raw_record(9999, KIND_STRUCT, false, 0, 0);
        assert!(matches!(
            Btf::parse(&b.build()),
            Err(BtfError::BadName { id: 2, name_off: 9999, offset }) if offset == HEADER_LEN + 16
        ));

        // A bad member name is only noticed when the members are read.
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let name = b.name("s");
        b.raw_record(name, KIND_STRUCT, false, 1, 4);
        for v in [9999, int, 0] {
            b.put(v);
        }
        let btf = parse(&b);
        assert!(matches!(
            btf.member_offset("s", "x"),
            Err(BtfError::BadType { id: 2, offset, .. }) if offset == HEADER_LEN + 16 + TYPE_LEN
        ));
    }

    #[test]
    fn unknown_kinds_are_bad_records() {
        for kind in [0, 20, 31] {
            let mut b = Builder::new();
            b.int("int", 4);
            b.record("x", kind, false, 0, 0);
            assert!(matches!(
                Btf::parse(&b.build()),
                Err(BtfError::UnknownKind { id: 2, offset, kind: k }) if offset == HEADER_LEN + 16 && k == kind
            ));
        }
    }

    #[test]
    fn unreadable_file_names_its_path() {
        let err = Btf::from_file(Path::new("/nonexistent/btf")).unwrap_err();
        assert!(matches!(&err, BtfError::Read { path, .. } if path == Path::new("/nonexistent/btf")));
        assert!(err.to_string().starts_with("reading /nonexistent/btf: "), "{err}");

        let path = std::env::temp_dir().join(format!("forge-btf-test-{}", std::process::id()));
        std::fs::write(&path, b"not BTF at all, but long enough for a header").unwrap();
        let err = Btf::from_file(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(&err, BtfError::Invalid { path: p, source } if *p == path && matches!(**source, BtfError::BadMagic { .. })),
            "{err}"
        );
    }

    impl Builder {
        fn clone_with(&self, edit: impl FnOnce(&mut Builder)) -> Vec<u8> {
            let mut c = Builder::with_endian(self.endian);
            c.types = self.types.clone();
            c.strings = self.strings.clone();
            edit(&mut c);
            c.build()
        }
    }

    /// Size in bytes of `id` on this kernel, following modifiers and arrays.
    fn type_size(btf: &Btf, id: u32) -> u32 {
        let id = btf.skip_modifiers(id).unwrap();
        let (rec, head) = btf.head(id).unwrap();
        match head.kind {
            KIND_PTR => size_of::<usize>() as u32,
            KIND_ARRAY => {
                let elem = btf.endian.u32_at(&btf.data, rec + TYPE_LEN).unwrap();
                let n = btf.endian.u32_at(&btf.data, rec + TYPE_LEN + 8).unwrap();
                type_size(btf, elem) * n
            }
            _ => head.size_or_type,
        }
    }

    /// Kind and name of `id` after modifiers; for a pointer, of its target.
    fn describe(btf: &Btf, id: u32) -> (u32, String) {
        let id = btf.skip_modifiers(id).unwrap();
        let (_, head) = btf.head(id).unwrap();
        let name = String::from_utf8_lossy(name_at(btf.strings(), head.name_off).unwrap()).into_owned();
        (head.kind, name)
    }

    fn pointee(btf: &Btf, id: u32) -> (u32, String) {
        let (_, head) = btf.head(btf.skip_modifiers(id).unwrap()).unwrap();
        assert_eq!(head.kind, KIND_PTR);
        describe(btf, head.size_or_type)
    }

    /// Parses this machine's kernel BTF and checks the six offsets against
    /// the rest of the kernel's own type information (no hard-coded values).
    #[test]
    fn running_kernel_offsets_are_consistent() {
        let started = std::time::Instant::now();
        let btf = Btf::from_running_kernel()
            .expect("this test needs /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF=y)");
        let parsed = started.elapsed();
        let offsets = KernelOffsets::from_btf(&btf).unwrap();
        eprintln!("{btf:?} parsed in {parsed:?}; {offsets:?}");

        // (struct, member, offset from KernelOffsets)
        let checks = [
            ("linux_binprm", "file", offsets.bprm_file),
            ("file", "f_path", offsets.file_f_path),
            ("file", "f_mode", offsets.file_f_mode),
            ("task_struct", "tgid", offsets.task_tgid),
            ("task_struct", "real_parent", offsets.task_real_parent),
            ("task_struct", "exit_code", offsets.task_exit_code),
        ];
        let mut spans: HashMap<&str, Vec<(u32, u32, &str)>> = HashMap::new();
        for (strukt, member, offset) in checks {
            let (struct_id, found) = btf.find(strukt, member).unwrap();
            assert_eq!(found.bit_offset, offset * 8);
            let size = type_size(&btf, found.type_id);
            let struct_size = btf.head(struct_id).unwrap().1.size_or_type;
            assert!(
                size > 0 && offset + size <= struct_size,
                "{strukt}.{member} at {offset}+{size} of {struct_size}"
            );
            assert_eq!(offset % size.min(8), 0, "{strukt}.{member} at {offset} is not naturally aligned");
            spans.entry(strukt).or_default().push((offset, offset + size, member));
        }
        for (strukt, spans) in &spans {
            for (i, a) in spans.iter().enumerate() {
                for b in &spans[i + 1..] {
                    assert!(a.1 <= b.0 || b.1 <= a.0, "{strukt}.{} and {strukt}.{} overlap", a.2, b.2);
                }
            }
        }

        // The member types are what the kernel programs read through them.
        let member_type = |s, m| btf.find(s, m).unwrap().1.type_id;
        assert_eq!(pointee(&btf, member_type("linux_binprm", "file")), (KIND_STRUCT, "file".into()));
        assert_eq!(
            pointee(&btf, member_type("task_struct", "real_parent")),
            (KIND_STRUCT, "task_struct".into())
        );
        assert_eq!(describe(&btf, member_type("file", "f_path")), (KIND_STRUCT, "path".into()));
        for (s, m) in [("file", "f_mode"), ("task_struct", "tgid"), ("task_struct", "exit_code")] {
            let id = member_type(s, m);
            assert_eq!((describe(&btf, id).0, type_size(&btf, id)), (KIND_INT, 4), "{s}.{m}");
        }
        // tgid and exit_code are plain ints, not bitfields; real_parent is a pointer, not 0.
        assert_ne!(offsets.task_real_parent, 0);
        assert_ne!(offsets.task_tgid, 0);
    }
}

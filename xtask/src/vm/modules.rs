//! Kernel modules a guest needs before it can mount the host's directories.
//!
//! Debian's 5.10 and 6.1 cloud kernels build virtio-pci, FUSE and virtiofs
//! as modules (6.12 builds them in). The packages ship the modules but no
//! `modules.dep`, and the host has no kmod, so dependencies are read from
//! each module's `.modinfo` ELF section (`depends=`). Compressed modules
//! (`.ko.xz`, `.ko.zst`) are unpacked on the host so the guest's busybox
//! `insmod` loads plain ELF files. Built-in modules (`modules.builtin`) are
//! skipped.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

/// What mounting a virtiofs share needs: the PCI transport and the file system.
pub(crate) const VIRTIOFS: &[&str] = &["virtio_pci", "virtiofs"];

/// One module to load: its name and its uncompressed ELF bytes.
pub(crate) struct Module {
    pub(crate) name: String,
    pub(crate) data: Vec<u8>,
}

/// The modules (with their dependencies, each before its users) that the
/// kernel unpacked at `tree` with `release` needs to provide `wanted`;
/// empty when all of them are built in.
pub(crate) fn resolve(tree: &Path, release: &str, wanted: &[&str]) -> anyhow::Result<Vec<Module>> {
    let dir = tree.join("lib/modules").join(release);
    let builtin: BTreeSet<String> = match fs::read_to_string(dir.join("modules.builtin")) {
        Ok(text) => text.lines().filter_map(|l| module_name(Path::new(l.trim()))).collect(),
        Err(_) => BTreeSet::new(),
    };
    let mut files = BTreeMap::new();
    index(&dir.join("kernel"), &mut files)?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        visit(&normalize(name), &builtin, &files, &mut seen, &mut order, release)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    builtin: &BTreeSet<String>,
    files: &BTreeMap<String, PathBuf>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<Module>,
    release: &str,
) -> anyhow::Result<()> {
    if builtin.contains(name) || !seen.insert(name.to_owned()) {
        return Ok(());
    }
    let Some(path) = files.get(name) else {
        bail!("kernel {release} has no module {name} (neither built in nor shipped in its package)")
    };
    let data = read_module(path)?;
    for dep in modinfo(&data, "depends").with_context(|| format!("reading {}", path.display()))? {
        for dep in dep.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            visit(&normalize(dep), builtin, files, seen, order, release)?;
        }
    }
    order.push(Module { name: name.to_owned(), data });
    Ok(())
}

/// Module names treat `-` and `_` alike; `_` is the canonical spelling.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/fs/fuse/virtiofs.ko.xz` → `virtiofs`.
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file.split_once(".ko").map(|(stem, _)| stem)?;
    Some(normalize(stem))
}

fn index(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            index(&path, files)?;
        } else if let Some(name) = module_name(&path) {
            files.insert(name, path);
        }
    }
    Ok(())
}

/// The module's ELF bytes, unpacked with `xz` or `zstd` when compressed.
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return fs::read(path).with_context(|| format!("reading {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("running {tool} -dc {}", path.display()))?;
    ensure!(out.status.success(), "{tool} -dc {} failed", path.display());
    Ok(out.stdout)
}

/// The values of `key` in the `.modinfo` section of the ELF64 module `elf`.
pub(super) fn modinfo(elf: &[u8], key: &str) -> anyhow::Result<Vec<String>> {
    let section = section(elf, ".modinfo")?.context("no .modinfo section")?;
    let prefix = format!("{key}=");
    Ok(section
        .split(|b| *b == 0)
        .filter_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect())
}

/// The bytes of the section called `name` in a little-endian ELF64 file.
fn section<'a>(elf: &'a [u8], name: &str) -> anyhow::Result<Option<&'a [u8]>> {
    ensure!(elf.get(..6) == Some(b"\x7fELF\x02\x01"), "not a little-endian ELF64 file");
    let shoff = usize::try_from(le(elf, 0x28, 8)?)?;
    let shentsize = usize::try_from(le(elf, 0x3a, 2)?)?;
    let shnum = usize::try_from(le(elf, 0x3c, 2)?)?;
    let shstrndx = usize::try_from(le(elf, 0x3e, 2)?)?;
    ensure!(shentsize >= 0x28, "ELF section header size {shentsize}");
    // (name offset, file offset, size) of section `i`.
    let header = |i: usize| -> anyhow::Result<(usize, usize, usize)> {
        let at = shoff + i * shentsize;
        Ok((
            usize::try_from(le(elf, at, 4)?)?,
            usize::try_from(le(elf, at + 0x18, 8)?)?,
            usize::try_from(le(elf, at + 0x20, 8)?)?,
        ))
    };
    let bytes = |offset: usize, size: usize| {
        elf.get(offset..offset.saturating_add(size)).context("ELF section outside the file")
    };
    let (_, str_off, str_size) = header(shstrndx)?;
    let names = bytes(str_off, str_size)?;
    for i in 0..shnum {
        let (name_at, offset, size) = header(i)?;
        let this = names.get(name_at..).and_then(|n| n.split(|b| *b == 0).next());
        if this == Some(name.as_bytes()) {
            return bytes(offset, size).map(Some);
        }
    }
    Ok(None)
}

/// The little-endian integer of `len` bytes at `at`.
fn le(b: &[u8], at: usize, len: usize) -> anyhow::Result<u64> {
    let field = b.get(at..at + len).context("ELF header outside the file")?;
    Ok(field.iter().rev().fold(0, |acc, byte| acc << 8 | u64::from(*byte)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 file: a null section, `.modinfo` and `.shstrtab`.
    fn elf(modinfo: &[u8]) -> Vec<u8> {
        let names = b"\0.modinfo\0.shstrtab\0";
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let modinfo_at = f.len();
        f.extend_from_slice(modinfo);
        let names_at = f.len();
        f.extend_from_slice(names);
        let shoff = f.len();
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        for (name, offset, size) in
            [(0u32, 0, 0), (1, modinfo_at, modinfo.len()), (10, names_at, names.len())]
        {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(offset as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            f.extend_from_slice(&h);
        }
        f
    }

    #[test]
    fn modinfo_reads_depends() {
        let f = elf(b"license=GPL\0depends=fuse,virtio\0intree=Y\0");
        assert_eq!(modinfo(&f, "depends").unwrap(), ["fuse,virtio"]);
        assert_eq!(modinfo(&f, "license").unwrap(), ["GPL"]);
        assert!(modinfo(&f, "alias").unwrap().is_empty());
        let f = elf(b"depends=\0");
        assert_eq!(modinfo(&f, "depends").unwrap(), [""]);
    }

    #[test]
    fn modinfo_refuses_what_is_not_elf64() {
        assert!(modinfo(b"\x7fELF\x01\x01", "depends").is_err());
        assert!(modinfo(b"hello", "depends").is_err());
        let mut f = elf(b"depends=\0");
        f.truncate(100);
        assert!(modinfo(&f, "depends").is_err());
    }

    #[test]
    fn module_names_drop_suffixes_and_dashes() {
        assert_eq!(module_name(Path::new("kernel/fs/fuse/virtiofs.ko")).as_deref(), Some("virtiofs"));
        assert_eq!(
            module_name(Path::new("kernel/drivers/char/hw_random/virtio-rng.ko.xz")).as_deref(),
            Some("virtio_rng")
        );
        assert_eq!(module_name(Path::new("modules.order")), None);
    }

    #[test]
    fn resolve_orders_dependencies_first_and_skips_builtins() {
        let dir = tempdir();
        let release = "5.10.0-1-cloud-amd64";
        let kernel = dir.join("lib/modules").join(release).join("kernel");
        fs::create_dir_all(kernel.join("fs")).unwrap();
        fs::write(kernel.join("fs/virtiofs.ko"), elf(b"depends=fuse,virtio_ring\0")).unwrap();
        fs::write(kernel.join("fs/fuse.ko"), elf(b"depends=\0")).unwrap();
        fs::write(kernel.join("fs/virtio_pci.ko"), elf(b"depends=virtio-ring\0")).unwrap();
        fs::write(
            dir.join("lib/modules").join(release).join("modules.builtin"),
            "kernel/drivers/virtio/virtio_ring.ko\n",
        )
        .unwrap();
        let got = resolve(&dir, release, VIRTIOFS).unwrap();
        let names: Vec<&str> = got.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["virtio_pci", "fuse", "virtiofs"]);
        let err = resolve(&dir, release, &["nine_p"]).err().unwrap();
        assert!(err.to_string().contains("no module nine_p"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-modules-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}

//! `cargo xtask vm-test`: boots Debian kernels with BPF LSM under QEMU
//! (software emulation) and runs the privileged test binary in the guest.

#[derive(clap::Args, Default)]
pub(crate) struct VmTestArgs {}

pub(crate) fn run(_args: &VmTestArgs) -> anyhow::Result<()> {
    anyhow::bail!("vm-test is not built yet")
}

//! `cargo xtask test` and `cargo xtask demo`.

#[derive(clap::Args, Default)]
pub(crate) struct TestArgs {}

pub(crate) fn run(_args: &TestArgs) -> anyhow::Result<()> {
    crate::setup::run(&crate::setup::SetupArgs::default())?;
    anyhow::bail!("test is not built yet")
}

pub(crate) fn demo() -> anyhow::Result<()> {
    crate::setup::run(&crate::setup::SetupArgs::default())?;
    anyhow::bail!("demo is not built yet")
}

//! `certmq demo` (being written).
pub(crate) async fn run(_devices: usize, _events: usize) -> anyhow::Result<()> {
    anyhow::bail!("demo not ready")
}

//! `tickstream serve`: run a node until SIGINT or SIGTERM.

use crate::config::ServeArgs;

pub(super) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.resolve()?;
    super::init_logs(settings.log.as_deref());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // Listening for signals before the node announces its address: a SIGTERM sent
        // right after that must shut it down in order, not kill it.
        let signal = super::wait_for_signal();
        let running = crate::server::start(settings).await?;
        signal.await;
        tracing::info!("shutting down");
        running.shutdown().await;
        Ok(())
    })
}

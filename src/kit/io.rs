//! The I/O threads every module's network work runs on (SSH sessions, BMC sessions, device
//! CLIs), never the run's own thread: key exchanges are not charged to the applet's CPU limit,
//! and dropping the run aborts them.

use std::sync::OnceLock;

/// The threads that drive every SSH connection and BMC session of this process.
pub fn io_runtime() -> &'static tokio::runtime::Runtime {
    static IO: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    IO.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("opslet-ssh")
            .enable_all()
            .build()
            .expect("the ssh I/O runtime starts")
    })
}

/// Runs `fut` on the I/O threads that own the SSH connections; dropping the returned future (a
/// cancelled or timed-out run) aborts it.
pub async fn on_io<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> Result<T, String> {
    struct Abort(tokio::task::AbortHandle);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let h = io_runtime().spawn(fut);
    let _guard = Abort(h.abort_handle());
    h.await.map_err(|e| format!("internal error: {e}"))
}
